# Names vulture cannot see used: attributes set on objects of other libraries, which read them themselves.
# Run as: vulture src tests benchmarks .ci/vulture_whitelist.py
from aiohttp import web
import faiss
import onnxruntime

web.StreamResponse.content_length  # aiohttp sends it as Content-Length
faiss.ProductQuantizer.niter  # k-means iterations of OPQ's quantizer training
faiss.OPQMatrix.pq  # the quantizer OPQ trains its rotation for
faiss.GpuIndexFlatConfig.useFloat16  # GPU flat index storage
onnxruntime.SessionOptions.log_severity_level
onnxruntime.SessionOptions.intra_op_num_threads
pytestmark  # pytest reads a test module's marks from it
web.AbstractAccessLogger.enabled  # aiohttp asks it before building a log line
onnxruntime.SessionOptions.graph_optimization_level
dim_param  # an ONNX shape dimension's symbolic name (onnx protobuf), set by benchmarks/gpu_recogniser.py
seaweedfs  # a fixture the tests ask for by name (tests/conftest.py settings), only where images go to S3
