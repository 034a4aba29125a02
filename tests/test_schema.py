"""schema.sql at the top of the repository is the whole schema as the migrations leave it."""

from __future__ import annotations

from pathlib import Path

from faceserve.db import schema

SCHEMA_SQL = Path(__file__).parents[1] / "schema.sql"


async def test_schema_sql_is_what_the_migrations_make(postgres_uri: str) -> None:
    made = await schema.fresh_schema(postgres_uri)
    assert "CREATE TABLE public.face_session_images" in made and "CREATE TABLE public.face_people" in made
    assert SCHEMA_SQL.read_text() == made, (
        "schema.sql differs from a fresh database's schema: run `faceserve db schema > schema.sql`"
    )
