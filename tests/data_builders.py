"""Shared builders of tiny on-disk datasets for the tests.

tests/ has no __init__.py; pytest's default (prepend) import mode puts tests/ on
sys.path, so test modules import this as ``from data_builders import make_train``.
"""

import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from maskstatus.data.layout import TRAIN_COLUMNS
from maskstatus.labels import IMAGE_STEMS, PROB_COLUMNS, STEM_TO_MASK, TASKS, combine_task_probs, encode

PEOPLE = [
    ("000001", "female", "Asian", 45),
    ("001498-1", "male", "White", 25),
    ("000003", "male", "Black", 60),
]


def make_train(
    root: Path,
    people=PEOPLE,
    exts=(".jpg", ".jpeg", ".png"),
    odd_modes: bool = False,
    color=None,
) -> Path:
    """A tiny competition-style train folder under ``root / "train"``.

    Person ``i``'s image ``j`` (in IMAGE_STEMS order) gets extension
    ``exts[(i + j) % len(exts)]``; pass a one-element tuple for a single extension.
    ``color`` fills every image with one RGB colour; by default each image gets
    ``(i * 40, j * 30, 90)``. With ``odd_modes``, ``.PNG`` images are RGBA and the first
    person's ``normal`` image is grayscale ("L").
    """
    train = root / "train"
    rows = []
    for i, (pid, gender, race, age) in enumerate(people):
        folder = f"{pid}_{gender}_{race}_{age}"
        person = train / "images" / folder
        person.mkdir(parents=True)
        for j, stem in enumerate(IMAGE_STEMS):
            ext = exts[(i + j) % len(exts)]
            mode, fill = "RGB", (color if color is not None else (i * 40, j * 30, 90))
            if odd_modes and ext == ".PNG":
                mode, fill = "RGBA", (9, 9, 9, 128)
            if odd_modes and (i, stem) == (0, "normal"):
                mode, fill = "L", 120
            Image.new(mode, (16, 12), fill).save(person / f"{stem}{ext}")
        rows.append({"id": pid, "gender": gender, "race": race, "age": age, "path": folder})
    pd.DataFrame(rows, columns=list(TRAIN_COLUMNS)).to_csv(train / "train.csv", index=False)
    return train


def png_header_only(width: int, height: int) -> bytes:
    """A few hundred bytes claiming a width x height RGB PNG: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def clean_oof_rows(people: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """An OOF table's rows with clean labels (every photo of ``people`` people, folds i % 5, no probabilities yet),
    each row's true (mask, gender, age) codes and its person's number."""
    rows, truth, person = [], [], []
    for i in range(people):
        gender, age = int(rng.integers(2)), int(rng.integers(3))
        for stem in IMAGE_STEMS:
            mask = STEM_TO_MASK[stem]
            rows.append((f"{i:06d}", stem, f"/d/{i:06d}/{stem}.jpg", encode(mask, gender, age), i % 5))
            truth.append((mask, gender, age))
            person.append(i)
    table = pd.DataFrame(rows, columns=["person_id", "stem", "image_path", "label", "fold"])
    return table, np.array(truth), np.array(person)


def with_task_probs(table: pd.DataFrame, task_probs: dict[str, np.ndarray]) -> pd.DataFrame:
    """The table with the 18 class probabilities made of per-task probabilities."""
    return pd.concat([table, pd.DataFrame(combine_task_probs(task_probs), columns=PROB_COLUMNS)], axis=1)


def uneven_oof(people: int = 40, seed: int = 0) -> pd.DataFrame:
    """Clean labels; the model is surer of some classes than others (which moves confident learning's
    thresholds) and of some people than others (so clean people compete with planted errors)."""
    rng = np.random.default_rng(seed)
    table, truth, person = clean_oof_rows(people, rng)
    sure = {"mask": [0.95, 0.6, 0.8], "gender": [0.95, 0.6], "age": [0.9, 0.45, 0.7]}
    factor = rng.uniform(0.05, 1.0, size=people)[person]
    task_probs = {}
    for t, codes in zip(("mask", "gender", "age"), truth.T):
        c = np.array(sure[t])[codes] * factor
        probs = rng.dirichlet(np.ones(TASKS[t]), size=len(codes)) * (1 - c)[:, None]
        probs[np.arange(len(codes)), codes] += c
        task_probs[t] = probs
    return with_task_probs(table, task_probs)
