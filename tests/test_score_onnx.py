"""The learned metrics' real path (weights located, tokenised, preprocessed, run by ONNX Runtime) on a tiny
CLIP-shaped model and tokenizer built here with `onnx` and `tokenizers`, in both public layouts."""

from __future__ import annotations

import io
import json
import math
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from promptgrid.errors import InvalidInput
from promptgrid.output.keys import image_key
from promptgrid.output.manifest.read import read_manifest
from promptgrid.output.manifest.writer import ManifestWriter
from promptgrid.output.scores import read_score_rows, with_scores
from promptgrid.output.sinks import open_sink
from promptgrid.score.clip import ClipModel
from promptgrid.score.stage import Weights, score_output
from promptgrid.types import JobOutcome, JobStatus
from tests.support.report_run import T0, make_job

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

VOCAB = {"[PAD]": 0, "[UNK]": 1, "<s>": 2, "</s>": 3, "red": 4, "green": 5, "blue": 6, "a": 7, "fox": 8}
OPSET = [helper.make_opsetid("", 13)]
# red, green and blue embed along the three axes; every other token (and padding) embeds as zero.
EMBEDDING = np.zeros((len(VOCAB), 3), np.float32)
EMBEDDING[4:7] = np.eye(3, dtype=np.float32)


def text_nodes() -> tuple[list, list, list]:
    """input_ids, attention_mask -> text_embeds: the masked sum of the tokens' embeddings."""
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
    ]
    initializers = [
        helper.make_tensor("embedding", TensorProto.FLOAT, EMBEDDING.shape, EMBEDDING.ravel()),
        helper.make_tensor("axis_2", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis_1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["tokens"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "axis_2"], ["mask_3"]),
        helper.make_node("Mul", ["tokens", "mask_3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis_1"], ["text_embeds"], keepdims=0),
    ]
    return inputs, initializers, nodes


def vision_nodes() -> tuple[list, list, list]:
    """pixel_values -> image_embeds: each channel's mean."""
    inputs = [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, 8, 8])]
    nodes = [helper.make_node("ReduceMean", ["pixel_values"], ["image_embeds"], axes=[2, 3], keepdims=0)]
    return inputs, [], nodes


def save_model(path: Path, parts: list[tuple[list, list, list]], outputs: list[str]) -> None:
    inputs = [value for part in parts for value in part[0]]
    initializers = [value for part in parts for value in part[1]]
    nodes = [node for part in parts for node in part[2]]
    results = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3]) for name in outputs]
    graph = helper.make_graph(nodes, path.stem, inputs, results, initializers)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8  # readable by every onnxruntime the extra allows
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)]
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {"model_max_length": 16, "pad_token": "[PAD]"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")


def build_clip(folder: Path, layout: str) -> Path:
    """A CLIP-shaped model folder: split encoders under onnx/ (transformers.js) or one model.onnx."""
    folder.mkdir(parents=True)
    save_tokenizer(folder)
    preprocessor = {"size": {"shortest_edge": 8}, "crop_size": {"height": 8, "width": 8},
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3}  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor), encoding="utf-8")
    if layout == "split":
        (folder / "onnx").mkdir()
        save_model(folder / "onnx" / "text_model.onnx", [text_nodes()], ["text_embeds"])
        save_model(folder / "onnx" / "vision_model.onnx", [vision_nodes()], ["image_embeds"])
    else:
        save_model(folder / "model.onnx", [text_nodes(), vision_nodes()], ["text_embeds", "image_embeds"])
    return folder


def build_aesthetic(folder: Path) -> Path:
    """A linear head: 2 × the first component of the normalised embedding, plus 0.5."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])]
    initializers = [
        helper.make_tensor("weight", TensorProto.FLOAT, [3, 1], [2.0, 0.0, 0.0]),
        helper.make_tensor("bias", TensorProto.FLOAT, [1], [0.5]),
    ]
    nodes = [helper.make_node("MatMul", ["embedding", "weight"], ["product"]),
             helper.make_node("Add", ["product", "bias"], ["score"])]  # fmt: skip
    result = [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])]
    model = helper.make_model(
        helper.make_graph(nodes, "aesthetic", inputs, result, initializers), opset_imports=OPSET
    )
    model.ir_version = 8
    onnx.save(model, str(folder / "aesthetic.onnx"))
    return folder


def record(sink, images: list[tuple[str, tuple[int, int, int]]]) -> None:
    with ManifestWriter(sink, run_id="run-1", spec_hash="spec-1") as writer:
        for index, (prompt, colour) in enumerate(images):
            job = make_job(f"job-{index}", prompt, 3.5, 20, index)
            buffer = io.BytesIO()
            Image.new("RGB", (24, 16), colour).save(buffer, format="PNG")
            uri = sink.put_bytes(image_key(job, "png"), buffer.getvalue(), "image/png")
            done = T0 + timedelta(seconds=index)
            writer.add(
                job, JobOutcome(job.job_id, JobStatus.SUCCESS, width=24, height=16, completed_at=done), uri
            )


@pytest.mark.parametrize("layout", ["split", "combined"])
def test_clip_score_and_aesthetic_run_through_onnx_runtime(tmp_path, layout):
    clip = build_clip(tmp_path / "clip", layout)
    aesthetic = build_aesthetic(tmp_path / "head")
    sink = open_sink(str(tmp_path / "out"))
    record(
        sink, [("a red fox", (255, 0, 0)), ("a blue fox", (255, 0, 0)), ("a green blue fox", (0, 255, 255))]
    )

    result = score_output(sink, ["clip", "aesthetic"], weights=Weights(str(clip), str(aesthetic)))
    assert result.scored == {"clip": 3, "aesthetic": 3}
    rows = {row["job_id"]: row for row in with_scores(read_manifest(sink), sink).to_pylist()}
    # A red image preprocesses to channels (1, -1, -1): cos with "red" (1, 0, 0) is 1/sqrt(3).
    assert rows["job-0"]["clip_score"] == pytest.approx(100 / math.sqrt(3), rel=1e-5)
    assert rows["job-1"]["clip_score"] == 0.0  # "blue" points away from it: clamped at 0
    # Cyan (-1, 1, 1) against "green blue" (0, 1, 1): cos = 2 / (sqrt(3) sqrt(2)).
    assert rows["job-2"]["clip_score"] == pytest.approx(100 * 2 / math.sqrt(6), rel=1e-5)
    assert rows["job-0"]["aesthetic"] == pytest.approx(2 / math.sqrt(3) + 0.5, rel=1e-5)
    assert rows["job-2"]["aesthetic"] == pytest.approx(-2 / math.sqrt(3) + 0.5, rel=1e-5)
    assert "sharpness" not in rows["job-0"]  # only what was asked for

    stored = read_score_rows(sink).to_pylist()
    assert {row["scorer"] for row in stored} == {"clip", "aesthetic"}
    assert all(row["scorer_version"].startswith("1-") for row in stored)
    assert (
        score_output(sink, ["clip_score", "aesthetic"], weights=Weights(str(clip), str(aesthetic))).total == 0
    )


def test_the_tokenizer_pads_a_batch_and_the_aesthetic_head_defaults_to_the_clip_folder(tmp_path):
    clip = build_clip(tmp_path / "clip", "split")
    build_aesthetic(clip)
    model = ClipModel(str(clip))
    embeddings = model.text_embeddings(["red", "a green fox and more blue words"])
    assert np.allclose(embeddings, [[1, 0, 0], [0, 1 / math.sqrt(2), 1 / math.sqrt(2)]], atol=1e-6)
    sink = open_sink(str(tmp_path / "out"))
    record(sink, [("a red fox", (255, 0, 0))])
    assert score_output(sink, ["aesthetic"], weights=Weights(str(clip))).scored == {"aesthetic": 1}


def test_weights_that_cannot_be_found_are_named(tmp_path):
    sink = open_sink(str(tmp_path / "out"))
    record(sink, [("a red fox", (255, 0, 0))])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="expected tokenizer.json and either text_model.onnx"):
        score_output(sink, ["clip"], weights=Weights(str(tmp_path / "empty")))
    with pytest.raises(InvalidInput, match="neither a folder nor a Hugging Face repository id"):
        score_output(sink, ["clip"], weights=Weights(str(tmp_path / "missing" / "folder")))
    # The tests run with HF_HUB_OFFLINE=1: a repository not in the cache cannot be fetched.
    with pytest.raises(InvalidInput, match="cannot fetch 'openai/clip-vit-base-patch32'"):
        score_output(sink, ["clip"], weights=Weights("openai/clip-vit-base-patch32"))
    clip = build_clip(tmp_path / "clip", "split")
    with pytest.raises(InvalidInput, match="no aesthetic.onnx"):
        score_output(sink, ["aesthetic"], weights=Weights(str(clip)))
    assert read_score_rows(sink) is None  # nothing was stored by the failed attempts
