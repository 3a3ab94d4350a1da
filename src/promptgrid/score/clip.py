"""Learned metrics through ONNX Runtime: CLIP score (prompt-image alignment) and an aesthetic predictor.

CLIP is read from a folder in one of two public layouts (docs/scores.md): split encoders
(`text_model.onnx` + `vision_model.onnx`, at the top or under `onnx/`, as transformers.js exports
such as Xenova/clip-vit-base-patch32 have) or one `model.onnx` taking both (`optimum-cli export onnx`),
with the tokenizer as `tokenizer.json` (Hugging Face `tokenizers`) and the image preprocessing from
`preprocessor_config.json` (CLIP's defaults when absent). CLIP score is 100 × max(cos(text, image), 0),
as torchmetrics defines it. The aesthetic predictor is a LAION-style head (`aesthetic.onnx`): the
L2-normalised CLIP image embedding in, one score out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from promptgrid.errors import InvalidInput
from promptgrid.score.metrics import ScoreItem
from promptgrid.score.weights import (
    AESTHETIC_FILE,
    COMBINED_FILE,
    SPLIT_FILES,
    find_file,
    fingerprint,
    locate,
    require,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224
CLIP_MAX_TOKENS = 77
CLIP_VERSION = "1"


@dataclass(frozen=True)
class Preprocessing:
    """CLIPImageProcessor's steps: resize the short side, centre-crop, scale to 0-1, normalise."""

    size: int = CLIP_SIZE
    crop: tuple[int, int] = (CLIP_SIZE, CLIP_SIZE)  # height, width
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)

    @classmethod
    def from_folder(cls, folder: Path) -> Preprocessing:
        path = folder / "preprocessor_config.json"
        if not path.is_file():
            return cls()
        config = json.loads(path.read_text(encoding="utf-8"))
        size: Any = config.get("size", CLIP_SIZE)
        size = size.get("shortest_edge", size.get("height", CLIP_SIZE)) if isinstance(size, dict) else size
        crop = config.get("crop_size", size)
        crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
        return cls(
            int(size),
            (int(crop[0]), int(crop[1])),
            tuple(config.get("image_mean", CLIP_MEAN)),
            tuple(config.get("image_std", CLIP_STD)),
            int(config.get("resample", int(Image.Resampling.BICUBIC))),
        )

    def pixels(self, image: Image.Image) -> np.ndarray:
        """One image as a (3, height, width) float32 array."""
        rgb = image.convert("RGB")
        scale = self.size / min(rgb.size)
        resized = (max(self.size, round(rgb.width * scale)), max(self.size, round(rgb.height * scale)))
        rgb = rgb.resize(resized, Image.Resampling(self.resample))
        height, width = self.crop
        left, top = (rgb.width - width) // 2, (rgb.height - height) // 2
        rgb = rgb.crop((left, top, left + width, top + height))
        array = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
        normalised = (array - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


class ClipModel:
    """A CLIP model's two encoders in ONNX Runtime, its tokenizer and its image preprocessing."""

    def __init__(self, where: str):
        self.folder = locate(where, [list(SPLIT_FILES), [COMBINED_FILE]], "CLIP model")
        ort = require("onnxruntime")
        tokenizers = require("tokenizers")
        split = [find_file(self.folder, name) for name in SPLIT_FILES]
        combined = find_file(self.folder, COMBINED_FILE)
        tokenizer_file = self.folder / "tokenizer.json"
        if not tokenizer_file.is_file() or not (all(split) or combined):
            raise InvalidInput(
                [
                    f"CLIP model {where}: expected tokenizer.json and either text_model.onnx + "
                    f"vision_model.onnx or model.onnx in {self.folder} (docs/scores.md)"
                ]
            )
        files = [path for path in split if path] if all(split) else [combined]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2  # a scoring pass shares the machine with runs and reports
        sessions = [
            ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for path in files
        ]
        self.text, self.vision = (
            (sessions[0], sessions[1]) if len(sessions) == 2 else (sessions[0], sessions[0])
        )
        self.tokenizer = _tokenizer(tokenizers, self.folder)
        self.preprocessing = Preprocessing.from_folder(self.folder)
        self.version = f"{CLIP_VERSION}-{fingerprint([path for path in files if path is not None])}"

    def text_embeddings(self, prompts: list[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch(prompts)
        ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
        mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.text is self.vision:
            feeds["pixel_values"] = np.zeros((1, 3, *self.preprocessing.crop), np.float32)
        return _normalised(_run(self.text, feeds, "text_embeds"))

    def image_embeddings(self, images: list[Image.Image]) -> np.ndarray:
        feeds = {"pixel_values": np.stack([self.preprocessing.pixels(image) for image in images])}
        if self.text is self.vision:
            feeds.update(input_ids=np.zeros((1, 2), np.int64), attention_mask=np.ones((1, 2), np.int64))
        return _normalised(_run(self.vision, feeds, "image_embeds"))


def _tokenizer(tokenizers: Any, folder: Path) -> Any:
    tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    longest = int(min(config.get("model_max_length", CLIP_MAX_TOKENS), CLIP_MAX_TOKENS))
    tokenizer.enable_truncation(max_length=longest)
    pad_token = config.get("pad_token")
    pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:
        pad_token, pad_id = "[PAD]", 0
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _run(session: Any, feeds: dict[str, np.ndarray], wanted: str) -> np.ndarray:
    """Run with the inputs the graph declares (int32 ids where it wants them); the named output, else the
    first."""
    given = {}
    for declared in session.get_inputs():
        value = feeds.get(declared.name)
        if value is None:
            raise InvalidInput([f"ONNX model input {declared.name!r} is not one promptgrid can provide"])
        given[declared.name] = value.astype(np.int32) if declared.type == "tensor(int32)" else value
        if declared.type == "tensor(float16)":
            given[declared.name] = value.astype(np.float16)
    names = [output.name for output in session.get_outputs()]
    name = wanted if wanted in names else names[0]
    return np.asarray(session.run([name], given)[0], dtype=np.float32)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.reshape(vectors.shape[0], -1)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class ClipScorer:
    """`clip_score`: how well each image matches its prompt."""

    name = "clip"

    def __init__(self, model: ClipModel):
        self.model = model
        self.version = model.version

    def score(self, items: list[ScoreItem]) -> list[dict[str, Any]]:
        texts = self.model.text_embeddings([item.prompt for item in items])
        images = self.model.image_embeddings([item.image for item in items])
        cosines = (texts * images).sum(axis=1)
        return [{"clip_score": float(100 * max(cosine, 0.0))} for cosine in cosines]


class AestheticScorer:
    """`aesthetic`: a LAION-style predictor (linear or MLP head) over CLIP image embeddings."""

    name = "aesthetic"

    def __init__(self, model: ClipModel, where: str):
        self.model = model
        folder = locate(where, [[AESTHETIC_FILE]], "aesthetic model")
        path = folder if folder.is_file() else find_file(folder, AESTHETIC_FILE)
        if path is None:
            raise InvalidInput([f"aesthetic model {where}: no {AESTHETIC_FILE} in {folder} (docs/scores.md)"])
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.version = f"{CLIP_VERSION}-{fingerprint([path])}-{model.version}"

    def score(self, items: list[ScoreItem]) -> list[dict[str, Any]]:
        embeddings = self.model.image_embeddings([item.image for item in items])
        scores = self.session.run(None, {self.input: embeddings})[0]
        return [
            {"aesthetic": float(value)}
            for value in np.asarray(scores, np.float32).reshape(len(items), -1)[:, 0]
        ]
