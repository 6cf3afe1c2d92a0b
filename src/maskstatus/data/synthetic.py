"""A small synthetic data set in the exact competition layout, drawn from nothing.

Tests, demos and smoke runs need data that (a) has the real folder tree, CSV
formats and file-name quirks, (b) is generated in seconds without downloads and
(c) is learnable, so a training run that works shows it. ``make_demo_data``
draws cartoon faces where every label has a visual cue:

- mask: wear covers nose and mouth, incorrect leaves the nose out, not wear shows both;
- gender: long hair down the sides (female) or short hair on top (male), plus lip colour;
- age group: hair greyness and wrinkle lines, with some noise so the boundaries are soft.

The eval truth lives beside ``train/`` and ``eval/`` (never inside ``eval/``) so
code that reads the eval folder cannot peek at it; ``score_submission`` uses it.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from ..defaults import DEFAULT_SEED, DEMO_PEOPLE, DEMO_WORKERS
from ..errors import UsageError
from ..labels import (
    DEFAULT_AGE_THRESHOLDS,
    GENDER_NAMES,
    IMAGE_STEMS,
    MASK_NAMES,
    NUM_CLASSES,
    STEM_TO_MASK,
    TASKS,
    age_group,
    encode,
)
from ..scoring.metrics import macro_f1

__all__ = ["DemoData", "make_demo_data", "read_truth", "score_submission"]

MIN_AGE, MAX_AGE = 18, 80
RACES = ("Asian", "Black", "White", "Indian", "Others")
RACE_WEIGHTS = (0.4, 0.15, 0.3, 0.1, 0.05)

# Skin tones by race; a person gets one of them plus a little jitter.
SKIN_TONES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "Asian": ((246, 215, 186), (232, 190, 150), (214, 170, 128)),
    "Black": ((141, 85, 36), (110, 68, 40), (84, 52, 34)),
    "White": ((255, 224, 204), (240, 200, 175), (225, 180, 150)),
    "Indian": ((198, 134, 66), (176, 120, 80), (150, 100, 64)),
    "Others": ((224, 172, 105), (190, 140, 100), (240, 200, 175)),
}
# Natural hair colours before greying: dark enough that grey and white stay distinct.
HAIR_COLOURS = ((25, 20, 18), (45, 30, 20), (70, 45, 25), (95, 60, 30), (110, 50, 25))
GREY_HAIR = np.array([228.0, 228.0, 232.0])
MASK_COLOURS = (
    (242, 242, 245),  # white
    (150, 195, 225),  # surgical blue
    (30, 30, 35),  # black
    (40, 50, 100),  # navy
    (135, 135, 140),  # grey
    (230, 160, 190),  # pink
    (70, 160, 150),  # teal
    (125, 30, 45),  # dark red
    (150, 120, 195),  # lavender
    (95, 140, 80),  # green
    (235, 200, 60),  # yellow
)
# Share of people per gender and age group; the (gender, age group) cells are
# covered once before sampling so every one of the 18 classes is present.
GENDER_WEIGHTS = (0.4, 0.6)
AGE_GROUP_WEIGHTS = (0.45, 0.40, 0.15)
# Typical hair greyness and wrinkle depth (0..1) per age group.
GREY_LEVELS = (0.05, 0.45, 0.9)
WRINKLE_LEVELS = (0.0, 0.45, 0.85)
EXTENSIONS = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 90
SUPERSAMPLE = 2  # drawn at 2x and reduced, for smooth edges


@dataclass(frozen=True)
class DemoData:
    """Where a generated data set lives: ``root/{train,eval}`` and the eval truth."""

    root: Path
    train_dir: Path
    eval_dir: Path
    truth_csv: Path


@dataclass
class _Person:
    """Everything that stays the same across one person's seven photos."""

    gender: int
    age: int
    race: str
    skin: np.ndarray
    hair: np.ndarray
    lips: np.ndarray
    background: np.ndarray
    shirt: np.ndarray
    wrinkles: float  # 0 none .. 1 deep, drawn from age
    beard: bool
    hair_volume: float
    cx: float  # face centre and size, as fractions of width/height
    cy: float
    scale: float
    angle: float
    mask_colours: list[tuple[int, int, int]] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    chin_mask: bool = False  # incorrect mask pulled down to the chin, mouth visible too


def _age_ranges() -> list[tuple[int, int]]:
    """Inclusive age range of each group on the default thresholds."""
    t = DEFAULT_AGE_THRESHOLDS
    return [(MIN_AGE, t.young_below - 1), (t.young_below, t.old_from - 1), (t.old_from, MAX_AGE)]


def _assign_cells(rng: np.random.Generator, n: int) -> list[tuple[int, int]]:
    """(gender, age group) per person: every cell once first (when n allows), then sampled."""
    n_gender, n_age = TASKS["gender"], TASKS["age"]
    cells = [(g, a) for g in range(n_gender) for a in range(n_age)][:n]
    extra = n - len(cells)
    genders = rng.choice(n_gender, size=extra, p=GENDER_WEIGHTS)
    ages = rng.choice(n_age, size=extra, p=AGE_GROUP_WEIGHTS)
    cells += list(zip(genders.tolist(), ages.tolist(), strict=True))
    order = rng.permutation(n)
    return [cells[i] for i in order]


def _jitter_colour(rng: np.random.Generator, rgb, amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float64) + rng.normal(0, amount, 3), 0, 255)


def _sample_person(rng: np.random.Generator, gender: int, group: int) -> _Person:
    lo, hi = _age_ranges()[group]
    age = int(rng.integers(lo, hi + 1))
    assert age_group(age) == group
    # Greyness and wrinkles step up with the age group (so the groups are learnable), drift
    # a little with age inside a group and carry noise, so the boundaries stay soft.
    within = (age - lo) / max(1, hi - lo) - 0.5
    grey = float(np.clip(GREY_LEVELS[group] + 0.15 * within + rng.normal(0, 0.07), 0, 1))
    wrinkles = float(np.clip(WRINKLE_LEVELS[group] + 0.15 * within + rng.normal(0, 0.07), 0, 1))
    race = str(rng.choice(RACES, p=RACE_WEIGHTS))
    tones = SKIN_TONES[race]
    skin = _jitter_colour(rng, tones[rng.integers(len(tones))], 6)
    base_hair = np.asarray(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], dtype=np.float64)
    hair = _jitter_colour(rng, (1 - grey) * base_hair + grey * GREY_HAIR, 5)
    female = GENDER_NAMES[gender] == "female"
    lips = _jitter_colour(rng, (200, 60, 80), 15) if female else skin * np.array([0.8, 0.62, 0.62])
    background = rng.uniform(40, 235, 3)
    shirt = rng.uniform(20, 235, 3)
    # One colour and pattern per photo (the one for `normal` goes unused): the five
    # masked photos of a person show five different masks, as in the competition.
    colours = rng.choice(len(MASK_COLOURS), size=len(IMAGE_STEMS), replace=False)
    return _Person(
        gender=gender,
        age=age,
        race=race,
        skin=skin,
        hair=hair,
        lips=lips,
        background=background,
        shirt=shirt,
        wrinkles=wrinkles,
        beard=bool(not female and rng.random() < 0.3),
        hair_volume=float(rng.uniform(0.9, 1.15)),
        cx=float(rng.uniform(0.44, 0.56)),
        cy=float(rng.uniform(0.40, 0.48)),
        scale=float(rng.uniform(0.88, 1.05)),
        angle=float(rng.uniform(-7, 7)),
        mask_colours=[MASK_COLOURS[i] for i in colours],
        patterns=[str(p) for p in rng.choice(["plain", "plain", "stripes", "dots"], size=len(IMAGE_STEMS))],
        chin_mask=bool(rng.random() < 0.3),
    )


def _rgb(c) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(round(float(v))))) for v in c)
    return r, g, b


class _FaceFrame:
    """Face-relative coordinates: (u, v) in [-1, 1] spans the face ellipse."""

    def __init__(self, cx: float, cy: float, rx: float, ry: float) -> None:
        self.cx, self.cy, self.rx, self.ry = cx, cy, rx, ry

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return (self.cx + u * self.rx, self.cy + v * self.ry)

    def box(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        (x0, y0), (x1, y1) = self.pt(u0, v0), self.pt(u1, v1)
        return [x0, y0, x1, y1]


def _mask_polygon(f: _FaceFrame, top: float, steps: int = 12) -> list[tuple[float, float]]:
    """Outline of a mask from height ``top`` down to under the chin, following the face edge."""
    bottom = 1.04
    pts = []
    # The sides follow the face ellipse (slightly wider) so the mask hugs the cheeks.
    for i in range(steps + 1):
        v = top + (bottom - top) * i / steps
        u = 1.04 * math.sqrt(max(0.0, 1 - min(v, 0.999) ** 2)) if v > 0 else 1.0
        pts.append(f.pt(u, v))
    for i in range(steps + 1):
        v = bottom - (bottom - top) * i / steps
        u = 1.04 * math.sqrt(max(0.0, 1 - min(v, 0.999) ** 2)) if v > 0 else 1.0
        pts.append(f.pt(-u, v))
    # Arched top edge: higher over the nose.
    pts.append(f.pt(-0.4, top - 0.04))
    pts.append(f.pt(0.0, top - 0.08))
    pts.append(f.pt(0.4, top - 0.04))
    return pts


def _draw_mask(draw: ImageDraw.ImageDraw, f: _FaceFrame, top: float, colour, pattern: str, rng) -> None:
    colour = np.asarray(colour, dtype=np.float64)
    dark = _rgb(colour * 0.7)
    lw = max(1, round(f.rx * 0.04))
    # Ear loops first so the mask body covers their ends.
    for v in (top + 0.08, min(top + 0.55, 0.85)):
        draw.line([f.pt(-0.85, v), f.pt(-1.12, -0.05)], fill=(235, 235, 235), width=lw)
        draw.line([f.pt(0.85, v), f.pt(1.12, -0.05)], fill=(235, 235, 235), width=lw)
    poly = _mask_polygon(f, top)
    draw.polygon(poly, fill=_rgb(colour), outline=dark)
    second = _rgb(255 - colour if colour.mean() < 128 else colour * 0.45)
    if pattern == "stripes":
        for u in np.linspace(-0.75, 0.75, 7):
            draw.line([f.pt(u, top + 0.05), f.pt(u, 0.92)], fill=second, width=lw)
    elif pattern == "dots":
        r = f.rx * 0.05
        for _ in range(14):
            x, y = f.pt(rng.uniform(-0.7, 0.7), rng.uniform(top + 0.08, 0.9))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=second)
    # Pleats: why a mask reads as cloth rather than a coloured chin.
    for k in (0.3, 0.6):
        v = top + (1.0 - top) * k
        draw.line([f.pt(-0.8, v), f.pt(0.8, v)], fill=dark, width=lw)


def _render(
    person: _Person,
    mask: int,
    mask_colour,
    pattern: str,
    rng: np.random.Generator,
    size: tuple[int, int],
) -> Image.Image:
    """One photo of ``person``; ``mask`` is a mask code (labels.MASK_NAMES)."""
    height, width = size
    H, W = height * SUPERSAMPLE, width * SUPERSAMPLE
    bg = person.background + rng.normal(0, 4, 3)
    img = Image.new("RGB", (W, H), _rgb(bg))
    draw = ImageDraw.Draw(img)

    # Small per-photo jitter: the same person, re-framed slightly.
    scale = person.scale * rng.uniform(0.97, 1.03)
    rx, ry = 0.30 * W * scale, 0.27 * H * scale
    cx = (person.cx + rng.uniform(-0.025, 0.025)) * W
    cy = (person.cy + rng.uniform(-0.02, 0.02)) * H
    f = _FaceFrame(cx, cy, rx, ry)
    skin = _rgb(person.skin)
    shade = _rgb(person.skin * 0.78)
    hair = _rgb(person.hair)
    hair_dark = _rgb(person.hair * 0.8)
    female = GENDER_NAMES[person.gender] == "female"
    lw = max(1, round(rx * 0.045))

    # Shoulders, then neck.
    draw.ellipse([cx - 1.5 * W * 0.5, f.pt(0, 1.45)[1], cx + 1.5 * W * 0.5, H * 1.6], fill=_rgb(person.shirt))
    draw.rectangle(f.box(-0.38, 0.5, 0.38, 1.5), fill=shade)

    vol = person.hair_volume
    if female:
        # Long hair falls behind the face, past the jaw, on both sides.
        draw.rounded_rectangle(f.box(-1.28 * vol, -1.2, 1.28 * vol, 1.75), radius=rx * 0.9, fill=hair)
    else:
        draw.ellipse(f.box(-1.06, -1.18 * vol, 1.06, 0.3), fill=hair)
        for s in (-1, 1):  # ears: hidden by long hair, visible with short hair
            x, y = f.pt(s * 0.98, 0.0)
            draw.ellipse([x - rx * 0.14, y - ry * 0.2, x + rx * 0.14, y + ry * 0.2], fill=skin)

    draw.ellipse(f.box(-1, -1, 1, 1), fill=skin)
    if person.beard:
        draw.chord(f.box(-0.95, -0.3, 0.95, 1.05), 20, 160, fill=hair_dark)
        draw.ellipse(f.box(-0.38, 0.36, 0.38, 0.66), fill=skin)

    # Fringe over the top of the forehead.
    fringe_low = -0.5 if female else -0.58
    draw.chord(f.box(-1.02, -1.12 * vol, 1.02, 2 * fringe_low + 1.12 * vol), 180, 360, fill=hair)
    if female:
        # Strands framing the face down the cheeks.
        draw.ellipse(f.box(-1.15, -0.85, -0.8, 1.1), fill=hair)
        draw.ellipse(f.box(0.8, -0.85, 1.15, 1.1), fill=hair)

    # Wrinkles: forehead lines, crow's feet and smile lines, darker with age.
    w = person.wrinkles
    if w > 0.15:
        line = _rgb(person.skin * (0.85 - 0.3 * w))
        n_lines = 1 + int(w * 3)
        for k in range(n_lines):
            v = -0.3 - 0.09 * k
            if v > fringe_low + 0.03:
                continue
            draw.arc(f.box(-0.5, v, 0.5, v + 0.25), 200, 340, fill=line, width=lw)
        if w > 0.45:
            for s in (-1, 1):
                x, y = f.pt(s * 0.68, -0.08)
                for dy in (-0.06, 0.0, 0.06):
                    draw.line([(x, y), (x + s * rx * 0.16, y + dy * ry * 2)], fill=line, width=lw)
                draw.line([f.pt(s * 0.22, 0.22), f.pt(s * 0.38, 0.6)], fill=line, width=lw)

    # Eyes and brows.
    brow = _rgb(person.hair * 0.7)
    for s in (-1, 1):
        ex, ey = f.pt(s * 0.38, -0.12)
        draw.ellipse([ex - rx * 0.17, ey - ry * 0.08, ex + rx * 0.17, ey + ry * 0.08], fill=(245, 245, 245))
        draw.ellipse([ex - rx * 0.07, ey - ry * 0.07, ex + rx * 0.07, ey + ry * 0.07], fill=(40, 30, 25))
        draw.line([f.pt(s * 0.2, -0.27), f.pt(s * 0.56, -0.29)], fill=brow, width=2 * lw)

    # Nose and mouth: drawn always, covered by the mask when worn.
    draw.polygon([f.pt(0, -0.05), f.pt(-0.15, 0.3), f.pt(0.15, 0.3)], fill=shade)
    for s in (-1, 1):
        x, y = f.pt(s * 0.08, 0.28)
        draw.ellipse([x - rx * 0.05, y - ry * 0.03, x + rx * 0.05, y + ry * 0.03], fill=_rgb(person.skin * 0.45))
    draw.chord(f.box(-0.3, 0.38, 0.3, 0.62), 0, 180, fill=_rgb(person.lips))
    draw.line([f.pt(-0.3, 0.5), f.pt(0.3, 0.5)], fill=_rgb(person.lips * 0.5), width=lw)

    if MASK_NAMES[mask] == "wear":
        _draw_mask(draw, f, 0.02, mask_colour, pattern, rng)
    elif MASK_NAMES[mask] == "incorrect":
        _draw_mask(draw, f, 0.64 if person.chin_mask else 0.36, mask_colour, pattern, rng)

    # Rotate about the face centre and reduce to the output size in one affine pass
    # (output pixel -> supersampled pixel); separate rotate + resize cost twice as much.
    theta = math.radians(person.angle + rng.uniform(-3, 3))
    cos, sin, S = math.cos(theta), math.sin(theta), SUPERSAMPLE
    ox, oy = (S - 1) / 2 - cx, (S - 1) / 2 - cy
    affine = (S * cos, -S * sin, cx + cos * ox - sin * oy, S * sin, S * cos, cy + sin * ox + cos * oy)
    img = img.transform(
        (width, height), Image.Transform.AFFINE, affine, resample=Image.Resampling.BILINEAR, fillcolor=_rgb(bg)
    )

    # Global brightness (x0.9..1.1) and mild sensor noise, per photo; integer maths is 3x faster.
    arr = (np.asarray(img, dtype=np.int32) * int(rng.integers(230, 282))) >> 8
    arr += rng.integers(-7, 8, arr.shape, dtype=np.int32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _save(img: Image.Image, path: Path) -> None:
    if path.suffix == ".png":
        img.save(path, format="PNG")
    else:
        img.save(path, format="JPEG", quality=JPEG_QUALITY)


def _person_photos(
    person: _Person, rng: np.random.Generator, size: tuple[int, int]
) -> Iterator[tuple[str, Image.Image]]:
    """Yield (stem, image) for the seven photos."""
    for i, stem in enumerate(IMAGE_STEMS):
        yield stem, _render(person, STEM_TO_MASK[stem], person.mask_colours[i], person.patterns[i], rng, size)


def _people(seed: int, split: int, n: int) -> list[_Person]:
    rng = np.random.default_rng([seed, split])
    cells = _assign_cells(rng, n)
    # One generator per person so a person's look does not depend on who came before.
    return [_sample_person(np.random.default_rng([seed, split, 1, i]), g, a) for i, (g, a) in enumerate(cells)]


def _person_extensions(rng: np.random.Generator, index: int) -> list[str]:
    """File extensions for one person's photos: mostly .jpg, some .png/.jpeg, a few mixed."""
    if index == 1:
        return [".png"] * len(IMAGE_STEMS)
    if index == 2:
        return [".jpeg"] * len(IMAGE_STEMS)
    if index == 3 or rng.random() < 0.08:
        return [str(e) for e in rng.choice(EXTENSIONS, size=len(IMAGE_STEMS))]
    return [".jpg"] * len(IMAGE_STEMS)


def _draw_person(job: tuple[_Person, list[int], tuple[int, int], list[Path]]) -> None:
    """Render and save one person's seven photos (a unit of work for a process pool)."""
    person, photo_seed, size, paths = job
    for (_, img), path in zip(_person_photos(person, np.random.default_rng(photo_seed), size), paths, strict=True):
        _save(img, path)


def _draw_all(jobs: Sequence[tuple[_Person, list[int], tuple[int, int], list[Path]]], workers: int) -> None:
    # Every person has a generator of their own, so the bytes do not depend on the number of workers.
    if workers <= 1 or len(jobs) < 2:
        for job in jobs:
            _draw_person(job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(pool.map(_draw_person, jobs, chunksize=max(1, len(jobs) // (8 * workers))))


def _write_train(train_dir: Path, seed: int, people: int, size: tuple[int, int], workers: int = 1) -> None:
    persons = _people(seed, 0, people)
    rng = np.random.default_rng([seed, 0, 2])
    # Sparse, sorted ids like the competition's (000001 .. 006959 with gaps).
    numbers = np.sort(rng.choice(np.arange(1, max(7000, 2 * people)), size=people, replace=False))
    ids = [f"{n:06d}" for n in numbers]
    # The competition has ids with a suffix (001498-1); ids must stay strings.
    ids[int(rng.integers(people))] += "-1"

    rows, jobs = [], []
    images = train_dir / "images"
    for i, (pid, person) in enumerate(zip(ids, persons, strict=True)):
        folder = f"{pid}_{GENDER_NAMES[person.gender]}_{person.race}_{person.age}"
        rows.append((pid, GENDER_NAMES[person.gender], person.race, person.age, folder))
        (images / folder).mkdir(parents=True, exist_ok=True)
        exts = _person_extensions(rng, i)
        jobs.append(
            (
                person,
                [seed, 0, 3, i],
                size,
                [images / folder / f"{stem}{ext}" for stem, ext in zip(IMAGE_STEMS, exts, strict=True)],
            )
        )
    _draw_all(jobs, workers)
    pd.DataFrame(rows, columns=["id", "gender", "race", "age", "path"]).to_csv(train_dir / "train.csv", index=False)


def _write_eval(
    eval_dir: Path, truth_csv: Path, seed: int, people: int, size: tuple[int, int], workers: int = 1
) -> None:
    persons = _people(seed, 1, people)
    images = eval_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows, jobs = [], []
    for i, person in enumerate(persons):
        # Opaque 40-hex names like the competition's, stable for a given seed.
        names = [
            hashlib.sha1(f"maskstatus-demo:{seed}:{i}:{stem}".encode()).hexdigest() + ".jpg" for stem in IMAGE_STEMS
        ]
        jobs.append((person, [seed, 1, 3, i], size, [images / name for name in names]))
        for stem, name in zip(IMAGE_STEMS, names, strict=True):
            mask, gender, age = STEM_TO_MASK[stem], person.gender, age_group(person.age)
            rows.append((name, encode(mask, gender, age), mask, gender, age))
    _draw_all(jobs, workers)
    truth = pd.DataFrame(rows, columns=["ImageID", "ans", "mask", "gender", "age"])
    truth = truth.iloc[np.random.default_rng([seed, 1, 2]).permutation(len(truth))].reset_index(drop=True)
    truth.to_csv(truth_csv, index=False)
    truth.assign(ans=0)[["ImageID", "ans"]].to_csv(eval_dir / "info.csv", index=False)


def make_demo_data(
    out_dir: Path,
    people: int = DEMO_PEOPLE,
    eval_people: int | None = None,
    seed: int = DEFAULT_SEED,
    size: tuple[int, int] = (128, 96),
    *,
    overwrite: bool = False,
    workers: int = DEMO_WORKERS,
) -> DemoData:
    """Draw a synthetic data set in the competition layout under ``out_dir``.

    Args:
        out_dir: created if missing; gets ``train/``, ``eval/`` and ``eval_truth.csv``.
        people: train people (7 photos each). All 18 classes appear when ``people >= 6``.
        eval_people: eval people; defaults to ``max(6, people // 2)``.
        seed: same seed, same bytes.
        size: (height, width) of every image.
        overwrite: replace an existing demo set in ``out_dir`` (only its ``train/``,
            ``eval/`` and ``eval_truth.csv``); without it an existing set is an error,
            because stale files from another seed would silently mix in.
        workers: processes that draw the photos; the bytes are the same for any number.

    ``eval_truth.csv`` has ``ImageID,ans,mask,gender,age`` (task codes; ``age`` is the
    age group) in the row order of ``eval/info.csv``.
    """
    if people < 1:
        raise UsageError(f"people must be >= 1, got {people}")
    eval_people = max(6, people // 2) if eval_people is None else eval_people
    if eval_people < 1:
        raise UsageError(f"eval_people must be >= 1, got {eval_people}")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    root = Path(out_dir)
    _check_out_dir(root)
    data = DemoData(root=root, train_dir=root / "train", eval_dir=root / "eval", truth_csv=root / "eval_truth.csv")
    existing = [p for p in (data.train_dir, data.eval_dir, data.truth_csv) if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds {[p.name for p in existing]}; pass overwrite=True to replace them")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    try:
        data.train_dir.mkdir(parents=True, exist_ok=True)
        data.eval_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only, no permission, a full disk
        raise UsageError(f"cannot create the demo data in {root}: {exc.strerror or exc}; give another folder") from None
    size = (int(size[0]), int(size[1]))
    _write_train(data.train_dir, seed, people, size, workers)
    _write_eval(data.eval_dir, data.truth_csv, seed, eval_people, size, workers)
    return data


def _check_out_dir(root: Path) -> None:
    """Refuse a folder that is a file, or lies under one, before anything is drawn."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        where = "is a file" if existing == root else f"lies under {existing}, a file"
        raise UsageError(f"demo data folder {root} {where}, not a folder; give a folder")


def read_truth(truth_csv: Path) -> pd.DataFrame:
    """Eval truth written by ``make_demo_data``: ``ImageID`` (str), ``ans``, ``mask``, ``gender``, ``age`` (ints)."""
    truth = pd.read_csv(truth_csv, dtype={"ImageID": str})
    missing = [c for c in ("ImageID", "ans", "mask", "gender", "age") if c not in truth.columns]
    if missing:
        raise ValueError(f"{truth_csv}: missing column(s) {missing}")
    return truth


def score_submission(submission_csv: Path, truth_csv: Path) -> dict[str, float]:
    """Macro F1 over the 18 classes (the competition metric) and accuracy of a submission.

    Rows are matched by ``ImageID``, so the submission's row order does not matter here.
    """
    truth = read_truth(truth_csv)
    sub = pd.read_csv(submission_csv, dtype={"ImageID": str})
    for col in ("ImageID", "ans"):
        if col not in sub.columns:
            raise ValueError(f"{submission_csv}: missing column {col!r}; columns are {list(sub.columns)}")
    if sub["ImageID"].duplicated().any():
        dup = sub.loc[sub["ImageID"].duplicated(), "ImageID"].head(3).tolist()
        raise ValueError(f"{submission_csv}: duplicated ImageID(s), e.g. {dup}")
    missing = sorted(set(truth["ImageID"]) - set(sub["ImageID"]))
    extra = sorted(set(sub["ImageID"]) - set(truth["ImageID"]))
    if missing or extra:
        raise ValueError(
            f"{submission_csv}: ImageIDs differ from {truth_csv}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    merged = truth[["ImageID", "ans"]].merge(sub[["ImageID", "ans"]], on="ImageID", suffixes=("_true", "_pred"))
    y_true = merged["ans_true"].to_numpy(dtype=np.int64)
    y_pred = merged["ans_pred"].to_numpy(dtype=np.int64)
    f1 = macro_f1(y_true, y_pred, NUM_CLASSES)
    return {"f1": float(f1), "accuracy": float(np.mean(y_true == y_pred)), "num_images": float(len(merged))}
