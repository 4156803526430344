"""Stand-in TensorRT Python API surfaces (8.6, 10.x, 11.x) for API-surface tests. NOT TensorRT.

`install(namespace, version)` fills a `tensorrt` stand-in module with exactly the members vtpdeploy's
builder and runner touch, as each version has them; members a version lacks are simply absent, so
touching them raises AttributeError (enums are real `IntEnum` classes without the removed members).
Every difference is cited from the public TensorRT API docs / release notes next to it.

Nothing here builds an engine: `build_serialized_network` returns a small placeholder that says so.
The checks it does make are the documented build errors the flags decide (explicit batch on 8.x,
INT8 flag for Q/DQ on weakly typed builders, FP16 flag on a strongly typed 10.x network).
Every call is appended as one JSON line to $TRT_STANDIN_LOG (when set), so tests can assert on it.
"""

from __future__ import annotations

import json
import os
from enum import IntEnum

PLACEHOLDER = b"TRT-STANDIN placeholder: not a TensorRT engine (API-surface test only) "


def record(**event) -> None:
    path = os.environ.get("TRT_STANDIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event, default=str) + "\n")


def read_onnx_facts(path: str) -> dict:
    """What the stand-in parser needs to know about an ONNX: opset, Q/DQ nodes, fp16 tensors, inputs."""
    import onnx
    from onnx import TensorProto

    m = onnx.load(path, load_external_data=False)
    g = m.graph
    inits = {i.name for i in g.initializer}
    inputs = []
    for vi in g.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        inputs.append((vi.name, dims))
    outputs = [(vi.name, [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim])
               for vi in g.output]
    return {
        "opset": next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
        "qdq": any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node),
        "fp16": any(i.data_type == TensorProto.FLOAT16 for i in g.initializer),
        "inputs": inputs,
        "outputs": outputs,
    }


def install(ns: dict, version: str) -> None:  # noqa: C901 - one surface per version, read top to bottom
    major = int(version.split(".")[0])
    ns["__version__"] = version
    ns["STANDIN"] = True  # so a test can tell it never ran real TensorRT

    # ---- enums ------------------------------------------------------------------------------------
    net_flags = {}
    if major < 11:
        # 8.6: EXPLICIT_BATCH, EXPLICIT_PRECISION (8.6.1 API docs, NetworkDefinitionCreationFlag);
        # 10.x: EXPLICIT_BATCH deprecated, ignored ("networks are always explicit batch in TensorRT 10.0").
        # 11.x: EXPLICIT_BATCH removed (11.0 release notes: APIs deprecated in 10.x removed).
        net_flags["EXPLICIT_BATCH"] = 0
    if major < 10:
        net_flags["EXPLICIT_PRECISION"] = 1  # 8.x only; removed in 10.0 (10.0 release notes)
    if major >= 10:
        # STRONGLY_TYPED added in 10.0 (10.0 release notes); kept in 11 but deprecated and ignored:
        # every network is strongly typed in 11.
        net_flags["STRONGLY_TYPED"] = 1
    NetworkDefinitionCreationFlag = IntEnum("NetworkDefinitionCreationFlag", net_flags)

    builder_flags = {"TF32": 6}  # TF32: "Enabled by default", in every version (BuilderFlag docs 8.6 -> 11)
    if major < 11:
        builder_flags.update(FP16=0, INT8=1)  # kFP16/kINT8 removed in 11.0 (strong typing only)
    BuilderFlag = IntEnum("BuilderFlag", builder_flags)
    MemoryPoolType = IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})  # 8.4 -> 11
    TensorIOMode = IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})  # 8.5 -> 11
    dtypes = {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5}  # 8.6 DataType
    if major >= 10:
        dtypes.update(BF16=7, INT64=8)  # BF16 from 9.0, INT64 from 10.0 (release notes)
    DataType = IntEnum("DataType", dtypes)
    ns.update(NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, BuilderFlag=BuilderFlag,
              MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode, DataType=DataType,
              float32=DataType.FLOAT, float16=DataType.HALF, int8=DataType.INT8, int32=DataType.INT32,
              bool=DataType.BOOL)
    if major >= 10:
        ns.update(bfloat16=DataType.BF16, int64=DataType.INT64)

    class Logger:
        Severity = IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity  # class aliases, as in every version

        def __init__(self, min_severity=None):
            self.min_severity = min_severity

    class Dims(tuple):
        """trt.Dims(list) exists 8.x -> 11."""

    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags):
            self.flags = flags
            self._inputs: list = []
            self._outputs: list = []
            self.facts: dict = {}

        @property
        def num_inputs(self):
            return len(self._inputs)

        def get_input(self, index):
            return self._inputs[index]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.logger, self._errors = network, logger, []

        @property
        def num_errors(self):
            return len(self._errors)

        def get_error(self, index):
            return self._errors[index]

        def parse_from_file(self, model):
            facts = read_onnx_facts(model)
            record(api="OnnxParser.parse_from_file", version=version, path=model, opset=facts["opset"])
            max_opset = 17 if major < 10 else 20 if major == 10 else 22  # onnx-tensorrt support matrix
            if major < 10 and not self.network.flags & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH):
                # 8.x: "the ONNX parser only supports networks with an explicit batch dimension"
                self._errors.append("network must be created with the EXPLICIT_BATCH flag")
                return False
            if facts["opset"] > max_opset:
                self._errors.append(f"unsupported opset {facts['opset']} (max {max_opset})")
                return False
            self.network.facts = facts
            self.network._inputs = [ITensor(n, d, DataType.FLOAT) for n, d in facts["inputs"]]
            self.network._outputs = [ITensor(n, d, DataType.FLOAT) for n, d in facts["outputs"]]
            return True

    if major < 11:
        def supports_model(self, model, path=None):  # removed in 11 (ceo notes: OnnxParser.supports_model gone)
            return True, []
        OnnxParser.supports_model = supports_model

    class IHostMemory(bytes):
        """Supports the buffer protocol, as the real IHostMemory."""

    class ITimingCache:
        def __init__(self, data=b""):
            self.data = bytes(data)

        def serialize(self):
            return IHostMemory(b"TRT-STANDIN timing cache")

    class IOptimizationProfile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, input, min, opt, max):  # noqa: A002 - the API's own names
            self.shapes[input] = (list(min), list(opt), list(max))
            record(api="IOptimizationProfile.set_shape", input=input, min=list(min), opt=list(opt), max=list(max))

    class IBuilderConfig:
        def __init__(self):
            self._flags = {BuilderFlag.TF32}  # TF32 on by default
            self.profiles, self.cache = [], None

        def set_memory_pool_limit(self, pool, pool_size):
            assert isinstance(pool, MemoryPoolType)

        def set_flag(self, flag):
            assert isinstance(flag, BuilderFlag), flag
            self._flags.add(flag)
            record(api="IBuilderConfig.set_flag", flag=flag.name)

        def clear_flag(self, flag):
            assert isinstance(flag, BuilderFlag), flag
            self._flags.discard(flag)
            record(api="IBuilderConfig.clear_flag", flag=flag.name)

        def get_flag(self, flag):
            return flag in self._flags

        def create_timing_cache(self, serialized_timing_cache):
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    if major < 11:
        IBuilderConfig.int8_calibrator = None  # implicit calibration: deprecated 10.1, removed in 11

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            names = [f.name for f in NetworkDefinitionCreationFlag if flags & (1 << f.value)]
            record(api="Builder.create_network", version=version, flags=flags, flag_names=names)
            return INetworkDefinition(flags)

        def create_builder_config(self):
            return IBuilderConfig()

        def create_optimization_profile(self):
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            strongly = major >= 11 or bool(
                "STRONGLY_TYPED" in net_flags and network.flags & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            flags = sorted(f.name for f in config._flags)
            record(api="Builder.build_serialized_network", version=version, strongly_typed=strongly,
                   builder_flags=flags, qdq=network.facts.get("qdq"), fp16_onnx=network.facts.get("fp16"))
            if strongly and any(f in flags for f in ("FP16", "INT8")):
                # 10.x: "strongly typed networks do not support the FP16/INT8 builder flags" (build error)
                return None
            if not strongly and network.facts.get("qdq") and "INT8" not in flags:
                # <= 10 weakly typed: "int8 precision has been set for a layer but int8 is not configured"
                return None
            if any(i.shape[0] == -1 for i in network._inputs) and not config.profiles:
                return None  # dynamic input without an optimization profile
            desc = json.dumps({"version": version, "strongly_typed": strongly, "flags": flags,
                               "inputs": [[i.name, list(i.shape)] for i in network._inputs],
                               "outputs": [[o.name, list(o.shape)] for o in network._outputs]})
            return IHostMemory(PLACEHOLDER + desc.encode())

    if major < 11:
        # platform_has_fast_fp16 / platform_has_fast_int8: removed in 11 (ceo notes)
        Builder.platform_has_fast_fp16 = property(lambda self: True)
        Builder.platform_has_fast_int8 = property(lambda self: True)
    if major < 10:
        # build_engine / max_batch_size exist only <= 8.6 (removed in 10.0)
        Builder.build_engine = lambda self, network, config: None
        Builder.max_batch_size = 1

    # ---- runtime ------------------------------------------------------------------------------------
    class IExecutionContext:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):  # tensor-name API: 8.5 -> 11
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return Dims(self.shapes[name])
            return Dims([self.shapes[next(iter(self.shapes))][0] if self.shapes else 1,
                         *self.engine.get_tensor_shape(name)[1:]])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            return True

        def execute_async_v3(self, stream_handle):  # 8.5 -> 11
            return True

    if major < 10:
        # binding-index API: removed in 10.0 (10.0 release notes)
        IExecutionContext.execute_async_v2 = lambda self, bindings, stream_handle: True
        IExecutionContext.set_binding_shape = lambda self, index, shape: True

    class ICudaEngine:
        def __init__(self, desc):
            self.io = [(n, s, TensorIOMode.INPUT) for n, s in desc["inputs"]]
            self.io += [(n, s, TensorIOMode.OUTPUT) for n, s in desc["outputs"]]

        @property
        def num_io_tensors(self):  # 8.5 -> 11
            return len(self.io)

        def get_tensor_name(self, index):
            return self.io[index][0]

        def _find(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_mode(self, name):
            return self._find(name)[2]

        def get_tensor_shape(self, name):
            return Dims(self._find(name)[1])

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            return IExecutionContext(self)

    if major < 11:
        ICudaEngine.device_memory_size = 1 << 20  # removed in 11 (replaced by device_memory_size_v2)
    if major >= 10:
        ICudaEngine.device_memory_size_v2 = 1 << 20  # added in 10.1
    if major < 10:
        ICudaEngine.num_bindings = property(lambda self: len(self.io))  # binding API: removed in 10.0

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            data = bytes(serialized_engine)
            if not data.startswith(PLACEHOLDER):
                return None
            return ICudaEngine(json.loads(data[len(PLACEHOLDER):]))

    ns.update(Logger=Logger, Dims=Dims, ITensor=ITensor, INetworkDefinition=INetworkDefinition,
              OnnxParser=OnnxParser, IHostMemory=IHostMemory, ITimingCache=ITimingCache,
              IOptimizationProfile=IOptimizationProfile, IBuilderConfig=IBuilderConfig, Builder=Builder,
              IExecutionContext=IExecutionContext, ICudaEngine=ICudaEngine, Runtime=Runtime)
