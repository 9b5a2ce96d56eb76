"""The gallery's int8 scan graph (models/int8_scan.onnx): one MatMulInteger, uint8 probes (zero point
128) times the int8 gallery matrix, int32 out. onnxruntime's integer kernels read a quarter of the
bytes of the float32 product, which is what a one-probe search of 100,000 identities is bound by."""

from __future__ import annotations

from pathlib import Path

from edgeface.storage.gallery_scan import SCAN_MODEL_FILE


def build_int8_scan_model(out_dir: Path) -> Path:
    """Write the scan graph to out_dir and record it in out_dir's manifest. Deterministic bytes."""
    import onnx
    from onnx import TensorProto, helper

    from edgeface.convert.manifest import record_model_file

    probes = helper.make_tensor_value_info("probes", TensorProto.UINT8, ["m", 128])
    gallery = helper.make_tensor_value_info("gallery_t", TensorProto.INT8, [128, "n"])
    out = helper.make_tensor_value_info("products", TensorProto.INT32, ["m", "n"])
    zero = helper.make_tensor("probe_zero_point", TensorProto.UINT8, [], [128])
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["probes", "gallery_t", "probe_zero_point"], ["products"])],
                              "int8_scan", [probes, gallery], [out], initializer=[zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgeface")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = out_dir / SCAN_MODEL_FILE
    path.write_bytes(model.SerializeToString())
    record_model_file(out_dir, SCAN_MODEL_FILE, source="built by edgeface (no weights: the gallery matrix is an input)",
                      license="Apache-2.0 (edgeface)",
                      made_by="edgeface.convert.scan_onnx.build_int8_scan_model: one MatMulInteger, opset 13")
    return path
