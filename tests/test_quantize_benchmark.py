"""benchmarks/quantize_int8.py on a tiny run (the real study is not CI's)."""

import json
import sys
from pathlib import Path

import pytest

from maskstatus.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quantize_int8  # noqa: E402


@pytest.mark.slow
def test_quantization_report_and_the_run_folder_untouched(tmp_path, tiny_config):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=1", "model.age_output=years")).run_dir
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "quantize.json"
    assert quantize_int8.main(["--run", str(run), "--out", str(out), "--methods", "minmax",
                               "--keep-float", "none,depthwise+ends", "--calibration", "8",
                               "--held-out", "24", "--speed-images", "16", "--batch-size", "8",
                               "--repeats", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["images"]["calibration"] <= 8 and report["images"]["held_out"] <= 24
    model = report["int8"]["int8-minmax"]
    held = report["images"]["held_out"]
    assert 0 <= model["answer_agreement"] <= 1 and model["max_prob_diff"] >= 0
    assert model["answers_differ"] == round((1 - model["answer_agreement"]) * held)
    mixed = report["int8"]["int8-minmax-float-depthwise+ends"]
    assert mixed["kept_in_float"] == "depthwise+ends" and mixed["file_mb"] > model["file_mb"]  # float weights kept
    assert set(report["model_only_images_per_s"]) == {"float32", "int8-minmax", "int8-minmax-float-depthwise+ends"}
    assert all(len(v) == 2 for v in report["model_only_images_per_s_each"].values())
    assert report["goal_met"] == (model["answer_agreement"] >= 0.995)
    assert report["run_configs"][run.name]["train"]["epochs"] == 1
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # the run folder is only read


def test_shape_arithmetic_is_told_apart_from_the_data_path():
    from onnx import TensorProto, helper

    # Clip amounts computed from Shape(x) are shape arithmetic; the Clip on x's values is not.
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Cast", ["s"], ["f"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Clip", ["f"], ["c"], name="clip_amounts"),
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Clip", ["r"], ["y"], name="clip_data"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    assert quantize_int8.shape_nodes(helper.make_model(graph)) == ["shape", "cast", "clip_amounts"]


def test_kept_float_sets_name_depthwise_convolutions_and_the_ends():
    from onnx import TensorProto, helper

    def conv(name, group):
        return helper.make_node("Conv", ["x", "w"], [name + "_y"], name=name, group=group)

    nodes = [conv("stem", 1), conv("dw1", 8), conv("pw1", 1), conv("dw2", 8), conv("last", 1),
             helper.make_node("Gemm", ["a", "b"], ["c"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph)
    assert quantize_int8.float_nodes(model, "none") == []
    assert quantize_int8.float_nodes(model, "depthwise") == ["dw1", "dw2"]
    assert quantize_int8.float_nodes(model, "ends") == ["stem", "last", "fc"]
    assert sorted(quantize_int8.float_nodes(model, "depthwise+ends")) == ["dw1", "dw2", "fc", "last", "stem"]
    with pytest.raises(ValueError, match="unknown set"):
        quantize_int8.float_nodes(model, "everything")
