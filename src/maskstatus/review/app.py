"""The review page's HTTP side: FastAPI over a ``Review`` and its ``DecisionStore``.

``GET /`` the page (no scripts from elsewhere: it works offline), ``GET /api/review`` the suspects, their
people and every decision so far, ``PUT /api/decisions/{task}/{person_id}`` one decision,
``POST /api/export`` the relabel CSV, ``GET /api/people/{person_id}/photos/{index}`` a photo. A photo is
picked by its person and its place in that person's list, never by a path, so nothing outside the people's
own photos can be asked for.
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError

from ..data.relabel import SWAP_VALUE
from ..defaults import LABEL_ERRORS_MIN_SCORE, LABEL_ERRORS_TOP
from ..errors import MaskstatusError, UsageError
from ..labels import AGE_NAMES, GENDER_NAMES
from ..runs import REVIEW, REVIEW_DECISIONS, REVIEW_RELABEL
from .decisions import DONE, DecisionStore, StaleDecision, export_relabel, next_command, normalise_value
from .suspects import Review, Suspect, age_group_range, load_review

# The keys the page answers to, shown on it; the page's script reads them from here.
KEYMAP: tuple[tuple[str, str, str], ...] = (
    ("a", "accept", "accept the suggestion (age without predicted years: type the years)"),
    ("k", "keep", "keep the given label"),
    ("v", "set", "set another value (gender, age in years)"),
    ("s", "skip", "skip for now"),
    ("u", "undo", "undo this tab's last decision"),
    ("j", "next", "next suspect (also the right arrow)"),
    ("h", "previous", "previous suspect (also the left arrow)"),
    ("t", "task", "next task filter"),
    ("e", "export", "export the relabel CSV"),
    ("?", "help", "show or hide the keys"),
)


class DecisionIn(BaseModel):
    action: str = Field(description="accept, keep, set, skip or pending (undo)")
    value: str | None = Field(None, description="the value of set; accept takes the suggestion when none is given")
    base_rev: int = Field(0, ge=0, description="the item's revision this decision was made on (0: never decided)")


def page_html() -> str:
    return resources.files("maskstatus.review").joinpath("page.html").read_text(encoding="utf-8")


def create_app(review: Review, store: DecisionStore, out_dir: Path) -> FastAPI:
    app = FastAPI(title="maskstatus review", docs_url=None, redoc_url=None)
    page = page_html()
    suspects = {s.key: s for s in review.suspects}
    export_path = Path(out_dir) / REVIEW_RELABEL

    @app.exception_handler(StaleDecision)
    async def stale(_: Request, err: StaleDecision) -> JSONResponse:
        current = err.current.model_dump() if err.current else None
        return JSONResponse({"detail": str(err), "key": err.key, "current": current}, status_code=409)

    @app.exception_handler(MaskstatusError)
    async def user_error(_: Request, err: MaskstatusError) -> JSONResponse:
        # The export's: the CV's own relabel file gone or broken since the review opened, a full disk.
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/api/review")
    def state() -> dict[str, Any]:
        wanted = dict.fromkeys(s.person_id for s in review.suspects)
        return {
            "cv": str(review.cv_dir),
            "data_root": str(review.data_root),
            "out": str(out_dir),
            "keys": [{"key": k, "name": n, "help": h} for k, n, h in KEYMAP],
            "choices": _choices(review),
            "suspects": [_suspect(s) for s in review.suspects],
            "people": {pid: _person(review, pid) for pid in wanted},
            "decisions": {k: d.model_dump() for k, d in store.read().items()},
            "done_actions": list(DONE),
        }

    @app.put("/api/decisions/{task}/{person_id}")
    def decide(task: str, person_id: str, body: DecisionIn) -> JSONResponse:
        suspect = suspects.get(f"{person_id}/{task}")
        value = body.value
        try:
            if body.action == "accept" and value is None:
                if suspect is None or suspect.suggestion is None:
                    raise ValueError("no suggestion to accept here: set a value (v)")
                value = suspect.suggestion
            if value is not None:
                value = normalise_value(task, value)
            decision = store.put(person_id, task, body.action, value, body.base_rev)
        except (ValidationError, ValueError) as err:
            return JSONResponse({"detail": _one_line(err)}, status_code=422)
        return JSONResponse({"decision": decision.model_dump()})

    @app.post("/api/export")
    def export() -> dict[str, Any]:
        result = export_relabel(review, store.read(), export_path)
        return {
            "path": str(result.path),
            "rows": result.rows,
            "new": result.new,
            "kept_from": str(result.kept_from) if result.kept_from else None,
            "command": next_command(review, result.path),
        }

    @app.get("/api/people/{person_id}/photos/{index}")
    def photo(person_id: str, index: int) -> FileResponse:
        person = review.people.get(person_id)
        if person is None or not 0 <= index < len(person.photos):
            raise HTTPException(404, "no such photo")
        path = person.photos[index].path
        if not path.is_file():
            raise HTTPException(404, f"photo missing from the data folder: {path.name}")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})

    return app


def _one_line(err: Exception) -> str:
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc']) or 'decision'}: {first['msg']}"
    return str(err)


def _choices(review: Review) -> dict[str, Any]:
    groups = {name: age_group_range(i, review.thresholds) for i, name in enumerate(AGE_NAMES)}
    return {"gender": list(GENDER_NAMES), "age_groups": groups, "mask_swap": [SWAP_VALUE]}


def _suspect(s: Suspect) -> dict[str, Any]:
    return {
        "key": s.key,
        "person_id": s.person_id,
        "task": s.task,
        "given": s.given,
        "predicted": s.predicted,
        "score": round(s.score, 4),
        "suggestion": s.suggestion,
        "reason": s.reason,
    }


def _person(review: Review, person_id: str) -> dict[str, Any]:
    p = review.people[person_id]
    return {
        "person_id": p.person_id,
        "gender": p.gender,
        "age": p.age,
        "years": None if p.years is None else round(p.years, 1),
        "gender_probs": p.gender_probs,
        "age_probs": p.age_probs,
        "photos": [
            {
                "stem": ph.stem,
                "given_mask": ph.given_mask,
                "mask_probs": ph.mask_probs,
                "url": f"/api/people/{quote(p.person_id, safe='')}/photos/{i}",
            }
            for i, ph in enumerate(p.photos)
        ],
    }


def open_review(
    cv_dir: Path | str,
    out_dir: Path | str | None = None,
    data_root: Path | str | None = None,
    top: int = LABEL_ERRORS_TOP,
    min_score: float = LABEL_ERRORS_MIN_SCORE,
) -> tuple[FastAPI, Review, Path]:
    """Read the CV, its data and any decisions so far (refusing bad ones), and build the app over them."""
    review = load_review(cv_dir, data_root, top, min_score)
    out = Path(out_dir) if out_dir is not None else review.cv_dir / REVIEW
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the review's decisions")
    store = DecisionStore(out / REVIEW_DECISIONS, review.cv_dir, set(review.people))
    return create_app(review, store, out), review, out
