"""A look at a data folder before training: one self-contained HTML page (``maskstatus eda``).

``analyse`` reads a folder in the competition layout (``train/`` and/or
``eval/``) once: it runs the structural checks of ``data.validate``, then opens
every image a single time to learn its format, size, EXIF orientation, whether
it decodes (the same ``load_rgb`` check ``validate-data`` makes, so the listed
problems are exactly validation's) and a perceptual hash. ``render`` turns the
result into a page: counts per class and task, the gender x age table, the age
histogram with the group boundaries, race, image properties, sample photos per
class, images shared across people, every problem, and (given a CV folder) the
people the label-error finder suspects.

Duplicates within one person are expected (one face in seven photos) and
ignored; the same or a nearly the same picture under two people, or in train
and eval, is a leak or a labelling accident worth a look.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..data.images import ImageError, load_rgb
from ..data.validate import Problem, summarize, validate_eval, validate_train
from ..labels import (
    DEFAULT_AGE_THRESHOLDS,
    GENDER_NAMES,
    GENDER_TO_CODE,
    IMAGE_STEMS,
    MASK_NAMES,
    NUM_CLASSES,
    STEM_TO_MASK,
    AgeThresholds,
    age_group,
    class_names,
    encode,
)
from ..outputs import check_output
from . import html as H

logger = logging.getLogger(__name__)

GENERATOR = "maskstatus eda"  # in each page's <meta name="generator">: a later eda may replace it
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_NAMES: dict[int, str] = {
    1: "upright",
    2: "mirrored",
    3: "rotated 180",
    4: "mirrored, rotated 180",
    5: "mirrored, rotated 90 CW",
    6: "rotated 90 CW",
    7: "mirrored, rotated 90 CCW",
    8: "rotated 90 CCW",
}
# Years just below each boundary that teams dropped from training (competition.md: 28-29 and 57-59);
# marked on the histogram so a reader sees how many people sit where the age labels are least certain.
NEAR_BOUNDARY_YEARS: tuple[int, int] = (2, 3)
# Perceptual hash (pHash): signs of the 16x16 lowest 2-D DCT frequencies of a 64x64 grey thumbnail
# against their median, 256 bits. Measured on 600 proxy people: a copy resized by 1.5 and saved again
# as JPEG quality 60 moved 10 bits at most; different people were 50 or more bits apart, a person's
# own photos (other mask, jitter) 22 or more. A difference hash (dHash) was tried first and dropped:
# on flat regions (masks, backgrounds) recompression flipped its bits, up to 64 of 256 for a copy.
HASH_SIZE = 16
HASH_THUMB = 64
NEAR_DUPLICATE_BITS = 16
SAMPLES_PER_CLASS = 4
MAX_DUPLICATES_SHOWN = 40
MAX_SUSPECTS_SHOWN = 30
EVAL_OWNER = "(eval)"

IMAGE_COLUMNS: tuple[str, ...] = ("path", "format", "width", "height", "orientation", "md5", "phash", "problem")


@dataclass
class EdaResult:
    """What ``analyse`` found; ``render`` turns it into a page."""

    data_dir: Path
    thresholds: AgeThresholds
    train: pd.DataFrame  # usable train images with codes (the columns of layout.TABLE_COLUMNS)
    eval: pd.DataFrame  # usable eval images: image_id, image_path
    images: pd.DataFrame  # every image opened: IMAGE_COLUMNS + set ("train"/"eval") + owner
    duplicates: pd.DataFrame  # image pairs across owners: path_a, owner_a, path_b, owner_b, distance, identical
    problems: list[Problem] = field(default_factory=list)
    suspects: pd.DataFrame | None = None  # find_label_errors table, when a CV folder was given
    run: Path | None = None


# -------------------------------------------------------------- per image


def _dct_basis(n: int, k: int) -> np.ndarray:
    """The first k rows of the orthonormal DCT-II matrix of size n (k x n)."""
    u, x = np.arange(k)[:, None], np.arange(n)[None, :]
    basis = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * u / (2 * n))
    basis[0] /= np.sqrt(2.0)
    return basis


_BASIS = _dct_basis(HASH_THUMB, HASH_SIZE)


def phash(rgb: np.ndarray) -> bytes:
    """Perceptual hash of an RGB image: HASH_SIZE**2 bits, as bytes.

    Written here rather than taken from the imagehash package: it is a few lines of numpy
    and would otherwise bring two dependencies (imagehash, PyWavelets) for this one function.
    """
    # BOX averages every pixel into the thumbnail, the low-pass that makes the hash ignore JPEG noise.
    grey = Image.fromarray(rgb).convert("L").resize((HASH_THUMB, HASH_THUMB), Image.Resampling.BOX)
    low = _BASIS @ np.asarray(grey, dtype=np.float64) @ _BASIS.T
    coeffs = low.reshape(-1)
    # The DC term is overall brightness, not structure, and far larger than the rest: it stays out of
    # the median (its own bit is always set), so the median splits the structural coefficients in half.
    bits = coeffs > np.median(coeffs[1:])
    return np.packbits(bits).tobytes()


def image_facts(path: str) -> dict:
    """Format, size (as stored), EXIF orientation, md5 of the bytes, pHash and decode problem of one file."""
    facts: dict = {
        "path": path,
        "format": None,
        "width": 0,
        "height": 0,
        "orientation": 1,
        "md5": None,
        "phash": None,
        "problem": None,
    }
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        try:  # unreadable: let the loader name the reason, as validate-data does
            load_rgb(path)
        except ImageError as image_err:
            facts["problem"] = image_err.reason
        else:
            facts["problem"] = f"cannot read file: {err.strerror or err}"
        return facts
    facts["md5"] = hashlib.md5(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            facts["format"] = img.format
            facts["width"], facts["height"] = img.size
            facts["orientation"] = int(img.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # the decode below reports why; the header facts just stay empty
        pass
    try:
        rgb = load_rgb(io.BytesIO(data))  # the check validate-data makes, so the reason reads the same
    except ImageError as err:
        facts["problem"] = err.reason
        return facts
    facts["phash"] = phash(rgb)
    return facts


def scan_images(paths: Sequence[str], workers: int | None = None) -> pd.DataFrame:
    """``image_facts`` of every path (threads: PIL and hashlib release the GIL), columns IMAGE_COLUMNS."""
    if not paths:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in IMAGE_COLUMNS})
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            tqdm(
                pool.map(image_facts, paths),
                total=len(paths),
                desc="reading images",
                unit="img",
                disable=None,
                leave=False,
            )
        )
    return pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))


# ------------------------------------------------------------- duplicates


def find_duplicates(
    hashes: np.ndarray, owners: np.ndarray, max_bits: int = NEAR_DUPLICATE_BITS, eval_owner: int = -1, chunk: int = 256
) -> pd.DataFrame:
    """Pairs (i, j), i < j, whose hashes differ in at most ``max_bits`` bits and whose owners differ.

    ``hashes`` is (N, W) uint64, each row a hash of 64*W bits; ``owners`` are integer person
    codes. Pairs of two ``eval_owner`` images are skipped, since eval photos carry no person and
    seven of them show one face. Brute force in row blocks on one 64-bit word, then the whole
    hash for the few pairs within ``max_bits`` on it (a part never differs more than the whole):
    exact, no index that could miss a pair, and seconds for 31,500 images.
    """
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(hashes), -1)
    owners = np.asarray(owners)
    found_i, found_j, found_d = [], [], []
    # Eval rows only need comparing with train rows, which come first once sorted.
    order = np.argsort(owners == eval_owner, kind="stable")
    h, o = hashes[order], owners[order]
    # The last word of a pHash (its highest vertical frequencies) varies most between faces, so the
    # fewest pairs pass it: on the proxy 0.07% against 0.4% for the first word.
    first = np.ascontiguousarray(h[:, -1])
    n_train = int((o != eval_owner).sum())
    for start in range(0, n_train, chunk):
        stop = min(start + chunk, n_train)
        near = np.bitwise_count(first[start:stop, None] ^ first[None, start:]) <= max_bits
        ii, jj = np.nonzero(near)
        ii, jj = ii + start, jj + start
        keep = (jj > ii) & (o[ii] != o[jj])
        ii, jj = ii[keep], jj[keep]
        dist = np.bitwise_count(h[ii] ^ h[jj]).sum(axis=1, dtype=np.int64)
        close = dist <= max_bits
        found_i.append(order[ii[close]])
        found_j.append(order[jj[close]])
        found_d.append(dist[close])
    if not found_i:
        return pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=np.int64)
    return pd.DataFrame(
        {"i": np.concatenate(found_i), "j": np.concatenate(found_j), "distance": np.concatenate(found_d)}
    ).astype(np.int64)


def _duplicate_pairs(images: pd.DataFrame) -> pd.DataFrame:
    columns = ["path_a", "owner_a", "path_b", "owner_b", "distance", "identical"]
    hashed = images[images["phash"].notna()].reset_index(drop=True)
    if hashed.empty:
        return pd.DataFrame(columns=columns)
    codes, uniques = pd.factorize(hashed["owner"])
    eval_code = list(uniques).index(EVAL_OWNER) if EVAL_OWNER in set(uniques) else -1
    words = np.frombuffer(b"".join(hashed["phash"]), dtype=np.uint64).reshape(len(hashed), -1)
    pairs = find_duplicates(words, codes, eval_owner=eval_code)
    a, b = hashed.iloc[pairs["i"].to_numpy()], hashed.iloc[pairs["j"].to_numpy()]
    out = pd.DataFrame(
        {
            "path_a": a["path"].to_numpy(),
            "owner_a": a["owner"].to_numpy(),
            "path_b": b["path"].to_numpy(),
            "owner_b": b["owner"].to_numpy(),
            "distance": pairs["distance"].to_numpy(),
            "identical": a["md5"].to_numpy() == b["md5"].to_numpy(),
        }
    )
    return out.sort_values(["distance", "owner_a", "path_a"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------- analysis


def _coded(checked: pd.DataFrame, thresholds: AgeThresholds) -> pd.DataFrame:
    """The checked train table (gender as a name) with the codes train_table would give (no relabel)."""
    table = checked.copy()
    table["mask"] = table["stem"].map(STEM_TO_MASK).astype("int64")
    table["gender"] = table["gender"].map(GENDER_TO_CODE).astype("int64")
    table["age"] = table["age"].astype("int64")
    table["age_group"] = np.asarray(age_group(table["age"].to_numpy(), thresholds), dtype=np.int64)
    table["label"] = np.asarray(encode(table["mask"], table["gender"], table["age_group"]), dtype=np.int64)
    return table.reset_index(drop=True)


def analyse(
    data_dir: str | Path,
    run: str | Path | None = None,
    thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS,
    workers: int | None = None,
) -> EdaResult:
    """Read a data folder (``train/`` and/or ``eval/``) for the EDA page; see the module docstring.

    Raises FileNotFoundError when ``data_dir`` is missing or holds neither train/ nor eval/, or when
    ``run`` has no out-of-fold predictions; problems inside the folders are collected, not raised.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder not found: {data_dir}")
    train_dir, eval_dir = data_dir / "train", data_dir / "eval"
    if not train_dir.is_dir() and not eval_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} holds neither train/ nor eval/: give the folder of the competition layout")
    suspects = None
    if run is not None:
        from ..scoring.label_errors import find_label_errors, load_oof

        # Read before the long image pass, so a wrong folder fails at once.
        suspects = find_label_errors(load_oof(run))

    problems: list[Problem] = []
    checked = pd.DataFrame(columns=["person_id", "image_path", "stem", "gender", "age", "race"])
    if train_dir.is_dir():
        checked, found = validate_train(train_dir, check_images=False)
        problems.extend(found)
    evals = pd.DataFrame(columns=["image_id", "image_path"])
    if eval_dir.is_dir():
        evals, found = validate_eval(eval_dir, check_images=False)
        problems.extend(found)

    paths = [*checked["image_path"], *evals["image_path"]]
    images = scan_images(paths, workers)
    images["set"] = ["train"] * len(checked) + ["eval"] * len(evals)
    images["owner"] = [*checked["person_id"].astype(str), *[EVAL_OWNER] * len(evals)]
    bad = images[images["problem"].notna()]
    problems.extend(Problem(p, r) for p, r in zip(bad["path"], bad["problem"], strict=True))
    bad_paths = set(bad["path"])

    train = _coded(checked[~checked["image_path"].isin(bad_paths)], thresholds) if len(checked) else checked
    evals = evals[~evals["image_path"].isin(bad_paths)].reset_index(drop=True)
    return EdaResult(
        data_dir,
        thresholds,
        train,
        evals,
        images,
        _duplicate_pairs(images),
        problems,
        suspects,
        Path(run) if run is not None else None,
    )


# ---------------------------------------------------------------- render


def _classes_section(r: EdaResult) -> str:
    summary = summarize(r.train, r.thresholds)
    rows = [
        [int(c), m, g, a, int(p), int(i)]
        for c, m, g, a, p, i in summary[["class", "mask", "gender", "age", "people", "images"]].itertuples(
            index=False, name=None
        )
    ]
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#1e88e5"] * 6 + ["#fb8c00"] * 6 + ["#8e24aa"] * 6
    ax.bar(summary["class"], summary["images"], color=colours)
    ax.set_xticks(range(NUM_CLASSES), labels=class_names(r.thresholds), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("images")
    ax.set_title("train images per class (blue: wear, orange: incorrect, purple: not wear)", fontsize=10)
    empty = [name for name, s in zip(class_names(r.thresholds), summary["images"], strict=True) if s == 0]
    warn = H.note(f"classes without any image: {', '.join(empty)}") if empty else ""
    return (
        H.note("class = mask*6 + gender*3 + age; a person counts once in each class they have photos in.")
        + warn
        + '<div class="row">'
        + H.table(rows, ["class", "mask", "gender", "age", "people", "images"], attrs='id="class-table"')
        + H.figure(fig, "images per class")
        + "</div>"
    )


def _tasks_section(r: EdaResult) -> str:
    t = r.train
    parts = []
    for task, names in (("mask", MASK_NAMES), ("gender", GENDER_NAMES), ("age_group", r.thresholds.names())):
        rows = []
        for code, name in enumerate(names):
            sel = t[t[task] == code]
            rows.append([name, int(sel["person_id"].nunique()), len(sel), len(sel) / max(len(t), 1)])
        title = "age group" if task == "age_group" else task
        parts.append(f"<div><h3>{H.esc(title)}</h3>" + H.table(rows, [title, "people", "images", "share"]) + "</div>")
    return '<div class="row">' + "".join(parts) + "</div>"


def _people(t: pd.DataFrame) -> pd.DataFrame:
    return t.drop_duplicates("person_id")


def _gender_age_section(r: EdaResult) -> str:
    people = _people(r.train)
    ages = r.thresholds.names()
    counts = pd.crosstab(people["gender"], people["age_group"]).reindex(
        index=range(len(GENDER_NAMES)), columns=range(len(ages)), fill_value=0
    )
    table = counts.to_numpy()  # reindexed above: row g, column a hold gender code g, age group a
    rows = [
        [GENDER_NAMES[g], *[int(table[g, a]) for a in range(len(ages))], int(table[g].sum())]
        for g in range(len(GENDER_NAMES))
    ]
    rows.append(["all", *[int(table[:, a].sum()) for a in range(len(ages))], int(table.sum())])
    return H.note("People (not images) per gender and age group.") + H.table(
        rows, ["gender", *ages, "all"], attrs='id="gender-age-table"'
    )


def near_boundary_bands(thresholds: AgeThresholds) -> list[tuple[int, int]]:
    """Inclusive year ranges just below each age boundary (e.g. 28-29 and 57-59 for 30 / 60)."""
    return [
        (b - k, b - 1) for b, k in zip((thresholds.young_below, thresholds.old_from), NEAR_BOUNDARY_YEARS, strict=True)
    ]


def _age_section(r: EdaResult) -> str:
    from matplotlib.figure import Figure

    people = _people(r.train)
    bands = near_boundary_bands(r.thresholds)
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.add_subplot()
    lo, hi = int(people["age"].min()), int(people["age"].max())
    years = np.arange(lo, hi + 1)
    bottom = np.zeros(len(years))
    for g, (name, colour) in enumerate(zip(GENDER_NAMES, ("#1e88e5", "#e53935"), strict=True)):
        counts = people[people["gender"] == g]["age"].value_counts().reindex(years, fill_value=0).to_numpy()
        ax.bar(years, counts, bottom=bottom, width=0.9, color=colour, label=name)
        bottom += counts
    for a, b in bands:
        ax.axvspan(a - 0.5, b + 0.5, color="#ffb300", alpha=0.25, lw=0, zorder=0)
    for edge in (r.thresholds.young_below, r.thresholds.old_from):
        ax.axvline(edge - 0.5, color="black", ls="--", lw=1)
    ax.set_xlabel("age (years); dashed: group boundaries, shaded: years just below them")
    ax.set_ylabel("people")
    ax.legend()
    rows = [[f"{a}-{b}", int(people["age"].between(a, b).sum())] for a, b in bands]
    rows.append([f">= {r.thresholds.old_from}", int((people["age"] >= r.thresholds.old_from).sum())])
    ages_at = people["age"].value_counts()
    oldest_note = ""
    if (people["age"] >= r.thresholds.old_from).any():
        share = ages_at.get(r.thresholds.old_from, 0) / (people["age"] >= r.thresholds.old_from).sum()
        oldest_note = H.note(f"{share:.0%} of the oldest group is exactly {r.thresholds.old_from} years old.")
    return (
        H.figure(fig, "age histogram")
        + H.note(f"ages {lo}-{hi}; median {people['age'].median():g}")
        + oldest_note
        + H.table(rows, ["ages", "people"], attrs='id="age-band-table"')
    )


def _race_section(r: EdaResult) -> str:
    people = _people(r.train)
    counts = pd.crosstab(people["race"], people["gender"]).reindex(columns=range(len(GENDER_NAMES)), fill_value=0)
    counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]
    rows = [[race, *[int(v) for v in row], int(row.sum()), row.sum() / len(people)] for race, row in counts.iterrows()]
    return H.table(rows, ["race", *GENDER_NAMES, "people", "share"])


def _images_section(r: EdaResult) -> str:
    ok = r.images[r.images["problem"].isna()]
    parts = []
    frame = ok.assign(
        size=ok["width"].astype(str) + " x " + ok["height"].astype(str),
        orientation=ok["orientation"].map(lambda o: f"{o} ({ORIENTATION_NAMES.get(o, 'unknown')})"),
    )
    for title, key in (("size (width x height)", "size"), ("format", "format"), ("EXIF orientation", "orientation")):
        counts = frame.groupby([key, "set"]).size().unstack("set", fill_value=0)
        counts = counts.reindex(columns=[c for c in ("train", "eval") if c in counts.columns])
        counts = counts.loc[counts.sum(axis=1).sort_values(ascending=False, kind="stable").index]
        shown = counts.head(15)
        rows = [[str(k), *[int(v) for v in row]] for k, row in shown.iterrows()]
        more = H.note(f"... and {len(counts) - len(shown)} more") if len(counts) > len(shown) else ""
        parts.append(f"<div><h3>{H.esc(title)}</h3>" + H.table(rows, [title, *counts.columns]) + more + "</div>")
    ext = ok.assign(ext=ok["path"].map(lambda p: Path(p).suffix.lower()))
    counts = ext.groupby(["ext", "set"]).size().unstack("set", fill_value=0)
    counts = counts.reindex(columns=[c for c in ("train", "eval") if c in counts.columns])
    rows = [[k, *[int(v) for v in row]] for k, row in counts.iterrows()]
    parts.append("<div><h3>file extension</h3>" + H.table(rows, ["extension", *counts.columns]) + "</div>")
    rotated = int((ok["orientation"] != 1).sum())
    text = (
        f"{rotated} image(s) carry an EXIF rotation; the loader turns them upright."
        if rotated
        else "No image carries an EXIF rotation."
    )
    return H.note(text) + '<div class="row">' + "".join(parts) + "</div>"


def _samples_section(r: EdaResult) -> str:
    rng = np.random.default_rng(0)
    names = class_names(r.thresholds)
    blocks = []
    for c in range(NUM_CLASSES):
        # Shuffled before keeping one photo per person, so the five "wear" photos all get shown.
        sel = r.train[r.train["label"] == c].sample(frac=1.0, random_state=c).drop_duplicates("person_id")
        pick = (
            sel.iloc[np.sort(rng.choice(len(sel), size=min(SAMPLES_PER_CLASS, len(sel)), replace=False))]
            if len(sel)
            else sel
        )
        cards = "".join(
            H.card(H.thumbnail(row["image_path"]), [str(row["person_id"]), f"{row['stem']}, {row['age']}"])
            for row in pick.to_dict("records")
        )
        blocks.append(f'<div><h3>{c}: {H.esc(names[c])}</h3><div class="grid">{cards or "no images"}</div></div>')
    return (
        H.note(f"Up to {SAMPLES_PER_CLASS} people per class, one photo each, drawn at random (seed 0).")
        + '<div class="row">'
        + "".join(blocks)
        + "</div>"
    )


def _duplicates_section(r: EdaResult) -> str:
    d = r.duplicates
    intro = H.note(
        f"Pairs of images of different people (or a train and an eval image) whose {HASH_SIZE * HASH_SIZE}-bit "
        f"perceptual hashes differ in at most {NEAR_DUPLICATE_BITS} bits. Photos of one person are alike by nature "
        "and left out; eval photos are not compared with each other (they carry no person)."
    )
    if d.empty:
        return intro + '<p class="ok">No duplicate or near-duplicate images across people.</p>'
    identical = int(d["identical"].sum())
    people = sorted(set(d["owner_a"]) | set(d["owner_b"]) - {EVAL_OWNER})
    head = (
        f'<p class="warn">{len(d)} pair(s), {identical} of them byte-identical files, '
        f"involving {len(people)} train people.</p>"
    )
    rows = []
    for p in d.head(MAX_DUPLICATES_SHOWN).to_dict("records"):
        pair = H.thumbnail(p["path_a"], (54, 72)) + " " + H.thumbnail(p["path_b"], (54, 72))
        rows.append(
            [
                pair,
                p["owner_a"],
                _short(p["path_a"], r.data_dir),
                p["owner_b"],
                _short(p["path_b"], r.data_dir),
                int(p["distance"]),
                "yes" if p["identical"] else "no",
            ]
        )
    more = H.note(f"first {MAX_DUPLICATES_SHOWN} of {len(d)} shown") if len(d) > MAX_DUPLICATES_SHOWN else ""
    return (
        intro
        + head
        + H.table(
            rows,
            ["images", "person A", "file A", "person B", "file B", "bits apart", "identical"],
            raw=(0,),
            attrs='id="duplicate-table"',
        )
        + more
    )


def _short(path: str, root: Path) -> str:
    # The folder is resolved, not the file: a problem may be a symbolic link that loops, which resolve() raises on.
    file = Path(path)
    try:
        return (file.parent.resolve() / file.name).relative_to(root.resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):
        return str(path)


def _problems_section(r: EdaResult) -> str:
    if not r.problems:
        return '<p class="ok">validate-data finds no problem.</p>'
    rows = [
        [_short(p.path.split(":")[0], r.data_dir) + (":" + p.path.split(":", 1)[1] if ":" in p.path else ""), p.reason]
        for p in r.problems
    ]
    return (
        f'<p class="warn">{len(r.problems)} problem(s); validate-data fails on these, and training leaves '
        "the items out only with --skip-bad.</p>" + H.table(rows, ["file", "problem"], attrs='id="problem-table"')
    )


def _suspects_section(r: EdaResult) -> str:
    s = r.suspects
    intro = H.note(
        f"People whose labels disagree with confident out-of-fold predictions of {r.run} "
        "(score: how likely the model finds the label wrong, 0..1). See find-label-errors."
    )
    if s is None or s.empty:
        return intro + '<p class="ok">No suspects.</p>'
    rows = []
    for row in s.head(MAX_SUSPECTS_SHOWN).to_dict("records"):
        strip = "".join(H.thumbnail(p, (36, 48)) for p in str(row["images"]).split(";") if p)
        rows.append(
            [
                row["person_id"],
                row["task"],
                row["given"],
                row["predicted"],
                float(row["score"]),
                f'<span class="strip">{strip}</span>',
            ]
        )
    more = H.note(f"first {MAX_SUSPECTS_SHOWN} of {len(s)} shown") if len(s) > MAX_SUSPECTS_SHOWN else ""
    return (
        intro
        + H.table(
            rows,
            ["person", "task", "given", "predicted", "score", f"photos ({', '.join(IMAGE_STEMS)})"],
            digits=2,
            raw=(5,),
            attrs='id="suspect-table"',
        )
        + more
    )


def render(r: EdaResult) -> str:
    """The EDA page of an ``analyse`` result, as one HTML string."""
    t = r.train
    sections = [
        H.Section(
            "summary",
            "Summary",
            H.kpis(
                [
                    ("train people", int(t["person_id"].nunique())),
                    ("train images", len(t)),
                    ("eval images", len(r.eval)),
                    ("problems", len(r.problems)),
                    ("cross-person duplicate pairs", len(r.duplicates)),
                ]
            ),
        )
    ]
    if len(t):
        sections += [
            H.Section("classes", "Per class", _classes_section(r)),
            H.Section("tasks", "Per task", _tasks_section(r)),
            H.Section("gender-age", "Gender x age group", _gender_age_section(r)),
            H.Section("age", "Age", _age_section(r)),
            H.Section("race", "Race", _race_section(r)),
        ]
    if len(r.images):
        sections.append(H.Section("images", "Image files", _images_section(r)))
    if len(t):
        sections.append(H.Section("samples", "Samples per class", _samples_section(r)))
    sections += [
        H.Section("duplicates", "Duplicates across people", _duplicates_section(r)),
        H.Section("problems", "Problems", _problems_section(r)),
    ]
    if r.run is not None:
        sections.append(H.Section("suspects", "Suspected label errors", _suspects_section(r)))
    return H.page(f"maskstatus EDA: {r.data_dir.name}", str(r.data_dir), sections, GENERATOR)


def write_eda(
    data_dir: str | Path,
    out: str | Path,
    run: str | Path | None = None,
    thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS,
    overwrite: bool = False,
) -> tuple[Path, EdaResult]:
    """Analyse ``data_dir`` and write the page to ``out``; returns (the file, the analysis).

    ``out`` is checked first: never inside ``data_dir``, ``run`` or any run or data folder, and an existing
    file is replaced only if it is an earlier eda page, or with ``overwrite`` (see ``maskstatus.outputs``).
    """
    check_output(
        out,
        command="eda",
        inputs=[data_dir, *([run] if run is not None else [])],
        previous=lambda p: H.is_page_of(p, GENERATOR),
        overwrite=overwrite,
    )
    result = analyse(data_dir, run, thresholds)
    return H.write_page(render(result), out), result


__all__ = [
    "EdaResult",
    "analyse",
    "find_duplicates",
    "image_facts",
    "near_boundary_bands",
    "phash",
    "render",
    "scan_images",
    "write_eda",
]
