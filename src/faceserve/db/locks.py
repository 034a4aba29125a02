"""Every Postgres advisory lock of faceserve, in one list so that no two collide.

Single-key locks take one bigint; the two-key form (class, int4) names a class and one member of it (a
session, a path's hash). The values are those the releases before this list used, so a fleet in the middle
of a rolling upgrade still excludes itself: never renumber one.
"""

from __future__ import annotations

# single key
SCHEMA = 7312001  # migrations: one process applies each step (db/migrations.py)
KEY_BOOTSTRAP = 7312002  # the first admin key is made once (db/access_keys.py)
SIGNING_KEY_CREATE = 7312003  # workers starting together make one URL signing key (db/signing_keys.py)
SESSION_EXPIRY = 7312004  # one process deletes expired sessions at a time (core/privacy.py)
START_SWEEP = 0x5F_EE_70  # start-up sweeps take turns across the fleet (db/sweeps.py)

# two-key classes
PEOPLE_WRITE = 7312101  # (class, session): writes to one session's people take turns (db/people.py)
PEOPLE_CLUSTERING = 7312102  # (class, session): one full clustering of a session at a time
# (class, session): uploads matching new faces hold it shared, a live search is made holding it alone (db/live.py)
LIVE_SEARCHES = 7312103
STORED_PATH = 0x5FEE  # (class, hashtext(path)): an upload's intent and a removal of that path take turns
NEW_BYTES = 7312104  # (class, a sha256's first 4 bytes): transactions recording the same bytes take turns
