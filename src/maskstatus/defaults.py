"""Default values that the library's functions and the command line share, each defined once.

The CLI builds its parser from these every time it starts, so this module imports nothing: ``maskstatus --help``
and a mistyped option are answered without loading numpy, sklearn or torch. The modules that use a value import it
from here (some under their older local name), and ``cli`` names it in its options and their help.
"""

from __future__ import annotations

# ---- data and labels
# Age groups: group 0 is age < YOUNG_BELOW, group 2 is age >= OLD_FROM (the competition's).
YOUNG_BELOW = 30
OLD_FROM = 60
# Bounds on an image's size, checked from the file header before decoding. 50 million pixels (150 MB
# decoded) is above any camera photo; PIL would decode 12000x12000 (2.7 GB with its copies) on every
# decoding thread at once.
MAX_IMAGE_PIXELS = 50_000_000

# ---- the demo and its data
DEMO_DIR = "demo"
DEMO_PEOPLE = 120
DEMO_WORKERS = 1
# The seed of the demo data, of the person bootstrap and of other resampling: the same seed, the same result.
DEFAULT_SEED = 0

# ---- prediction (predict, ensemble, pseudo-label, serve, export)
DEFAULT_CHECKPOINT = "best"
DEFAULT_ACCELERATOR = "auto"
DEFAULT_BACKEND = "torch"
DEFAULT_NUM_WORKERS = 0
DEFAULT_VOTE = "soft"
# Largest allowed difference between an ONNX export and PyTorch: on probabilities, and on raw outputs relative to
# their size (1 + |value|: logits near 0, predicted years near 40). float32 kernels that fuse or reorder
# operations differ by ~1e-5 here; a wrong graph differs by orders of magnitude more.
EXPORT_TOLERANCE = 1e-3

# ---- scoring
# Person-bootstrap replicates and the level of the intervals that score, cv and the reports print.
DEFAULT_BOOT = 1000
DEFAULT_LEVEL = 0.9
# find-label-errors: most suspects kept per task, and the least score (how likely a label is wrong) kept.
LABEL_ERRORS_TOP = 50
LABEL_ERRORS_MIN_SCORE = 0.5
# find-label-errors: how suspects are ranked, one of choices.LABEL_ERROR_RANKERS. Chosen by the recall of planted
# errors (benchmarks/label_errors.py, benchmarks/results/label-errors-*.json).
LABEL_ERRORS_RANKER = "confidence"
# tune-age: grid step of the age cut points, in years.
AGE_CUT_STEP = 0.5

# ---- sweeps
# Optuna's RDB heartbeat: a worker records one every SWEEP_HEARTBEAT_S seconds, and a RUNNING trial silent for
# SWEEP_GRACE_S is failed by the next worker to start a trial (a killed worker's).
SWEEP_HEARTBEAT_S = 60
SWEEP_GRACE_S = 180
# Seconds a worker waits for another's write to a shared SQLite file before the write fails.
SWEEP_SQLITE_TIMEOUT_S = 60
SWEEP_STORAGE_RETRY_S = 2  # a worker that lost the race to create a new study database's tables tries again after
# A worker stops when this many of its trials in a row fail (a broken base config or data fails them all).
SWEEP_MAX_FAILS_IN_A_ROW = 3
SWEEP_PRUNER = "median"
SWEEP_TRIALS = 20
# Trials that finish before the median pruner judges any (it needs others to compare with), and epochs a trial
# always trains before it can be pruned.
SWEEP_PRUNE_STARTUP = 2
SWEEP_PRUNE_WARMUP = 0
# Trials drawn at random before TPE models the results (Optuna's default).
SWEEP_SAMPLER_STARTUP = 10

# ---- reports
EDA_PAGE = "eda.html"

# ---- serving
# This machine only: anyone who can connect may use the model, so listening wider is the user's explicit choice.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
REVIEW_PORT = 8001  # maskstatus review: beside a serve on the default port
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_FILES = 16
# Seconds a client may leave the server waiting for the next part of its request body (uvicorn has no such timeout).
DEFAULT_READ_TIMEOUT_S = 10.0
# Most pixels one uploaded image may decode to. A face photo needs little: the competition's are 384x512 (0.2 MP)
# and the models see 128 px or less. 16 MP holds a 12 MP phone portrait (4032x3024) decoded in full, as a PNG, WebP
# or TIFF is; a JPEG is decoded at reduced size (DECODE_MIN_SIDE) so even a 50 MP one counts as about 3 MP. Decoding
# holds about 15 bytes a pixel at its peak (RGBA, the composite onto white, RGB), so 16 MP is ~240 MB at most.
DEFAULT_MAX_PIXELS = 16_000_000
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale keeping their longest side at least this: the face detector finds
# faces down to a few percent of such a photo, and a face crop is still far larger than any model's input.
DECODE_MIN_SIDE = 1600
# Decoded pixels per request and for all requests at once, in images of DEFAULT_MAX_PIXELS (or --max-pixels).
REQUEST_PIXELS_IMAGES = 3
SERVER_PIXELS_IMAGES = 4
