"""Helpers shared by the test files: generated image folders, independent metric references,
planted activation stores, a results Dataset and command-line runs.

Test files import them from here (pytest puts tests/ on ``sys.path``), never from one another;
fixtures live in conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import xarray as xr
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from ftdyn import __version__
from ftdyn import checkpoints as ckpt
from ftdyn.cli import app
from ftdyn.results import validate_results
from ftdyn.store import LayerSpec, StoreSpec, StoreWriter, create_store

# ---------------------------------------------------------------------------------- image folders
# Drawn with PIL, seeded, with a class-dependent colour *and* shape so a small CNN can learn them
# in a few epochs: ``circle`` a reddish disc on a dark background, ``square`` a greenish filled
# square, ``stripes`` bluish horizontal stripes.
CLASSES = ("circle", "square", "stripes")


def draw_image(class_name: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """One synthetic RGB image of ``class_name`` (see the section comment)."""
    bg = tuple(int(v) for v in rng.integers(0, 60, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    jitter = lambda lo, hi: int(rng.integers(lo, hi))
    if class_name == "circle":
        colour = (jitter(180, 256), jitter(0, 80), jitter(0, 80))
        r = jitter(size // 5, size // 3)
        cx, cy = jitter(r, size - r), jitter(r, size - r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif class_name == "square":
        colour = (jitter(0, 80), jitter(180, 256), jitter(0, 80))
        a = jitter(size // 3, size // 2)
        x, y = jitter(0, size - a), jitter(0, size - a)
        draw.rectangle((x, y, x + a, y + a), fill=colour)
    else:
        colour = (jitter(0, 80), jitter(0, 80), jitter(180, 256))
        step = jitter(4, 7)
        for y in range(jitter(0, step), size, step):
            draw.rectangle((0, y, size, y + step // 2 - 1), fill=colour)
    noise = rng.integers(-12, 13, (size, size, 3))
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_image_folder(
    root: Path, per_class: int, *, classes=CLASSES, size: int = 32, seed: int = 0, ext: str = "png"
) -> Path:
    """``root/<class>/<class>_NN.<ext>`` with ``per_class`` images per class; returns ``root``."""
    root = Path(root)
    for k, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, k])
        for i in range(per_class):
            draw_image(name, rng, size).save(folder / f"{name}_{i:02d}.{ext}")
    return root


def hooked_forward(
    model, images: np.ndarray, modules: list[str], norm: dict
) -> dict[str, np.ndarray]:
    """Independent reference for stored activations: a plain forward pass of ``model`` (eval mode)
    on uint8 NHWC ``images`` normalized as ``(x/255 - mean)/std``, with the test's own hooks
    recording each module's last output."""
    model.eval()
    outs, handles = {}, []
    for name in modules:

        def hook(_m, _i, o, name=name):
            outs[name] = o.detach().clone()

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(
        1, 3, 1, 1
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: v.numpy() for k, v in outs.items()}


# ------------------------------------------------------------------------------ metric references
# Written here, independent of the package code:
# * ref_pwsm: netrep's ``LinearMetric(alpha, center_columns=True, score_method="angular")``
#   transcribed (center, eigh of XᵀX, clip 1e-7, whiten with the variance-preserving rescale,
#   np.linalg.svd alignment, angle of the aligned data);
# * ref_procrustes: ``scipy.linalg.orthogonal_procrustes`` (its ``scale`` is the nuclear norm);
# * ref_cka: Kornblith et al.'s Gram-based code (``center_gram``/``cka``, biased and debiased)
#   transcribed.


def ref_whiten(X, alpha, eigval_tol=1e-7):
    """netrep.utils.whiten(X, alpha, preserve_variance=True, eigval_tol=1e-7)."""
    if alpha > (1 - eigval_tol):
        return X
    lam, V = np.linalg.eigh(X.T @ X)
    lam = np.maximum(lam, eigval_tol)
    d = alpha + (1 - alpha) * lam ** (-1 / 2)
    new_var = np.sum(
        (alpha**2) * lam
        + 2 * alpha * (1 - alpha) * (lam**0.5)
        + ((1 - alpha) ** 2) * np.ones_like(lam)
    )
    d *= np.sqrt(np.sum(lam) / new_var)
    Z = (V * d[None, :]) @ V.T
    return X @ Z


def ref_pwsm(X, Y, alpha):
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    X = X - X.mean(0)
    Y = Y - Y.mean(0)
    Xw, Yw = ref_whiten(X, alpha), ref_whiten(Y, alpha)
    U, _, Vt = np.linalg.svd(Xw.T @ Yw, full_matrices=False)
    Xa, Ya = Xw @ U, Yw @ Vt.T
    c = np.sum(Xa * Ya) / (np.linalg.norm(Xa) * np.linalg.norm(Ya))
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def ref_cos_pwsm(X, Y, alpha):
    """The cosine (before arccos) of ref_pwsm: for comparisons at tiny angles."""
    X = np.asarray(X, np.float64) - np.mean(X, 0)
    Y = np.asarray(Y, np.float64) - np.mean(Y, 0)
    Xw, Yw = ref_whiten(X, alpha), ref_whiten(Y, alpha)
    return np.linalg.svd(Xw.T @ Yw, compute_uv=False).sum() / (
        np.linalg.norm(Xw) * np.linalg.norm(Yw)
    )


def centered_unit(X):
    X = np.asarray(X, np.float64)
    X = X - X.mean(0)
    return X / np.linalg.norm(X)


def ref_procrustes(X, Y):
    _, scale = scipy.linalg.orthogonal_procrustes(centered_unit(X), centered_unit(Y))
    return 1.0 - scale


def _center_gram(gram, unbiased=False):
    gram = gram.copy()
    if unbiased:
        n = gram.shape[0]
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0, dtype=np.float64) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0, dtype=np.float64)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def ref_cka(X, Y, debiased=False):
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    gx, gy = _center_gram(X @ X.T, debiased), _center_gram(Y @ Y.T, debiased)
    return gx.ravel().dot(gy.ravel()) / (np.linalg.norm(gx) * np.linalg.norm(gy))


# ------------------------------------------------------------ planted activation store (analysis)
# images: layer "features.3" has h*w = 36 > N (Gram side for filter), "layer2.relu" 9 < N (row side)
N = 12
LAYERS = [LayerSpec("features.3", 4, 6, 6), LayerSpec("layer2.relu", 6, 3, 3)]
NOISE = (0.0, 0.1, 0.3, 1.0)  # checkpoint e = source + NOISE[e] * noise


def make_planted_store(
    path,
    *,
    noise=NOISE,
    dead_filter=None,
    complete=None,
    model="resnet18",
    dataset="toy",
    seed=0,
    dtype="float32",
    spc=5,
    layers=None,
    n=N,
    scale=1.0,
    epochs=None,
):
    """A planted store: activations of epoch e are relu(base + noise[e] * eps_e) * scale. Returns
    (path, data)."""
    layers = layers or LAYERS
    rng = np.random.default_rng(seed)
    epochs = tuple(epochs or range(len(noise)))
    spec = StoreSpec(
        architecture="resnet18",
        layers=layers,
        checkpoints=[
            {"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": f"{e:064d}"} for e in epochs
        ],
        images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
        labels=np.arange(n) % 3,
        class_names=["a", "b", "c"],
        image_paths=[f"img/{i}.png" for i in range(n)],
        input_size=8,
        normalization={"mean": [0.0] * 3, "std": [1.0] * 3},
        probe={"seed": seed},
        dtype=dtype,
        samples_per_chunk=spc,
        model=model,
        dataset=dataset,
    )
    path = create_store(path, spec)
    writer = StoreWriter(path)
    base = {l.name: rng.normal(size=(n, l.channels, l.height, l.width)) + 0.5 for l in layers}
    data = {}
    for i, e in enumerate(epochs):
        acts = {}
        for name, b in base.items():
            a = (np.maximum(b + noise[i] * rng.normal(size=b.shape), 0) * scale).astype(dtype)
            if dead_filter is not None:
                a[:, dead_filter] = 0
            acts[name] = a
        data[e] = acts
        for c in range(writer.n_chunks):
            if complete is not None and not complete(i, c):
                continue
            rows = writer.chunk_slice(c)
            writer.write_region(i, c, {k: v[rows] for k, v in acts.items()})
    return path, data


# ------------------------------------------------- planted activation store and results (figures)
# A non-square image, a non-square map and a non-square field, so that swapped
# (h, w), square-map argmax decoding or transposed crops all show up.
IMAGE_HW = (24, 30)
MAP_HW = (6, 15)
RF = {"size": [9, 5], "jump": [4, 2], "start": [2, 1]}  # unit (u, v) centred at (2 + 4u, 1 + 2v)
EPOCHS = (0, 1, 2)
# planted argmax of filter 1: class -> epoch -> (u, v); class 1 sits on the image corner (field
# leaves it)
PLANTED = {0: {0: (3, 10), 1: (1, 4), 2: (4, 12)}, 1: {0: (0, 14), 1: (5, 0), 2: (0, 14)}}
N_PER_CLASS = 4


def planted_activations(n, labels, epoch_index, rng):
    """(n, 4, h, w) maps: filter 0 constant over epochs, 1 planted and moving, 2 slightly
    scaled, 3 dead."""
    h, w = MAP_HW
    base = np.random.default_rng(123).uniform(0, 0.5, size=(n, 4, h, w)).astype(np.float32)
    acts = base.copy()
    acts[:, 2] *= 1.0 + 0.1 * epoch_index
    acts[:, 3] = 0.0
    for i in range(n):
        u, v = PLANTED[int(labels[i])][epoch_index]
        acts[i, 1, u, v] = 1.0 + 0.25 * i  # the weight of image i
    return acts


def make_figure_store(path, *, rf=RF, manifest=True, epochs=EPOCHS):
    n = 2 * N_PER_CLASS
    labels = np.repeat([0, 1], N_PER_CLASS)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, *IMAGE_HW, 3), dtype=np.uint8)
    man = None
    if manifest:
        man = {
            "architecture": "toy",
            "epochs": [
                {
                    "epoch": e,
                    "file": f"epoch_{e:03d}.pt",
                    "sha256": "0" * 64,
                    "train_loss": None if e == 0 else 1.0 / (e + 1),
                    "train_acc": None if e == 0 else 0.5 + 0.1 * e,
                    "val_loss": 1.2 / (e + 1),
                    "val_acc": 0.4 + 0.1 * e,
                }
                for e in epochs
            ],
        }
    spec = StoreSpec(
        architecture="toy",
        model="toynet",
        dataset="shapes",
        layers=[LayerSpec("features.3", 4, *MAP_HW, rf), LayerSpec("features.8", 4, *MAP_HW, rf)],
        checkpoints=[{"epoch": e, "file": f"epoch_{e:03d}.pt", "sha256": "0" * 64} for e in epochs],
        images=images,
        labels=labels,
        class_names=["circle", "square"],
        image_paths=[f"img/{i}.png" for i in range(n)],
        input_size=IMAGE_HW[0],
        normalization={"mean": [0.5] * 3, "std": [0.5] * 3},
        probe={"seed": 0},
        dtype="float32",
        samples_per_chunk=3,
        manifest=man,
    )
    create_store(path, spec)
    writer = StoreWriter(path)
    for ci, _ in enumerate(epochs):
        acts = planted_activations(n, labels, ci, rng)
        for chunk in range(writer.n_chunks):
            rows = writer.chunk_slice(chunk)
            writer.write_region(ci, chunk, {"features.3": acts[rows], "features.8": acts[rows] * 2})
    return path, images, labels


EXPERIMENTS = [("toynet", "shapes"), ("toynet", "fruits")]
METRICS = [("procrustes", "channels", np.nan), ("pwsm", "channels", 0.0), ("cka", "filter", np.nan)]


def make_results(
    store_paths=("", ""),
    *,
    epochs=(0, 1, 2, 3),
    bootstrap=200,
    layers=("features.3", "features.8"),
    experiments=EXPERIMENTS,
    metrics=METRICS,
):
    """A small results Dataset that passes validate_results (the second experiment has one
    layer less)."""
    E, M, L, T, Fn = len(experiments), len(metrics), len(layers), len(epochs), 4
    ep = np.asarray(epochs, dtype=float)
    dist = np.full((E, M, L, T), np.nan)
    traj = np.full((E, M, L, T, T), np.nan)
    fdist = np.full((E, M, L, T, Fn), np.nan)
    layer_names = np.array([list(layers), [*layers[:-1], ""]][:E], dtype=object)
    for e in range(E):
        for m in range(M):
            for li in range(L):
                if not layer_names[e, li]:
                    continue
                f = 0.05 * (li + 1) * (1 + e) * np.sqrt(ep) * (1 + 0.2 * m)
                dist[e, m, li] = f
                traj[e, m, li] = np.abs(f[:, None] - f[None, :])
                if metrics[m][1] == "filter":
                    # filter 3: dead (NaN)
                    fdist[e, m, li, :, :3] = f[:, None] * np.array([0.1, 0.2, 0.9])[None]
    ci = 0.01 if bootstrap else np.nan
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # padding layers: mean of nothing is NaN
        layer_mean = np.nanmean(dist[..., 1:], axis=-1)
        reuse = np.nanmean(layer_mean, axis=-1)
    r = np.ones((E, L, M, M))
    for (a, b), value in {(0, 1): 0.9, (0, 2): 0.7, (1, 2): 0.8}.items():
        if b < M:
            r[:, :, a, b] = r[:, :, b, a] = value
    dims4 = ("experiment", "metric", "layer_index", "epoch")
    ds = xr.Dataset(
        {
            "distance": (dims4, dist),
            "ci_low": (dims4, dist - ci),
            "ci_high": (dims4, dist + ci),
            "n_filters": (("experiment", "metric", "layer_index"), np.full((E, M, L), 4)),
            "n_nan": (dims4, np.zeros((E, M, L, T), dtype=int)),
            "filter_distance": ((*dims4, "filter"), fdist),
            "trajectory": ((*dims4, "epoch_other"), traj),
            "reusability_mean": (("experiment", "metric"), reuse),
            "reusability_std": (("experiment", "metric"), np.full((E, M), 0.02)),
            "layer_reusability_mean": (("experiment", "metric", "layer_index"), layer_mean),
            "layer_reusability_std": (
                ("experiment", "metric", "layer_index"),
                np.full((E, M, L), 0.01),
            ),
            "agreement_r": (("experiment", "layer_index", "metric", "metric_other"), r),
        },
        coords={
            "experiment": [f"{m}/{d}" for m, d in experiments],
            "model": ("experiment", [m for m, _ in experiments]),
            "dataset": ("experiment", [d for _, d in experiments]),
            "store": ("experiment", [str(s) for s in store_paths][:E]),
            "metric": [m for m, _, _ in metrics],
            "view": ("metric", [v for _, v, _ in metrics]),
            "alpha": ("metric", [a for _, _, a in metrics]),
            "layer_index": np.arange(L),
            "layer": (("experiment", "layer_index"), layer_names.astype(str)),
            "epoch": list(epochs),
            "epoch_other": list(epochs),
            "filter": np.arange(Fn),
            "metric_other": [m for m, _, _ in metrics],
        },
        attrs={
            "ftdyn_results_format": 1,
            "ftdyn_version": __version__,
            "reference_epoch": 0,
            "preset": "paper",
            "bootstrap": bootstrap,
            "seed": 0,
            "arguments": json.dumps({"metrics": "all"}),
            "created": "2025-01-01T00:00:00",
        },
    )
    return validate_results(ds)


def png_shape(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape


# ----------------------------------------------------------------------------------- command line
FAST_TRAIN = ["--input-size", "32", "--batch-size", "8", "--device", "cpu", "--no-progress"]
_runner = CliRunner()


def run_cli(*args):
    return _runner.invoke(app, [str(a) for a in args])


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.load_checkpoint_payload(path)["state_dict"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def cli_command(*args) -> list[str]:
    return [sys.executable, "-c", "from ftdyn.cli import app; app()", *map(str, args)]


def kill_cli_when(args, ready, what: str, timeout: float = 120) -> int:
    """Run the CLI with ``args`` in a subprocess (one thread, this checkout first on the path),
    SIGKILL it as soon as ``ready()`` holds, and return its exit code; fails (never hangs) if
    it ends first or ``what`` does not appear within ``timeout`` seconds."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }
    proc = subprocess.Popen(
        cli_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, (
                f"the run ended before {what}: {proc.stderr.read().decode()}"
            )
            assert time.monotonic() < deadline, f"hang: {what} never appeared"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


# ------------------------------------------------------------------------------- a real browser
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ARROW_KEYS = {"ArrowLeft": 37, "ArrowRight": 39}
#: how every test starts a headless Chromium (no GPU, no sandbox, no background traffic)
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    """The first Chromium (or Chrome) on the PATH, None when there is none."""
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    it reads commands on its fd 3 and writes answers and events on its fd 4, NUL-separated JSON),
    so no driver binary or package is needed. Name resolution fails for every host and every
    request goes to a dead proxy, and the page's network is emulated offline; every console
    message, uncaught exception, browser log entry and request is recorded (:meth:`problems`)."""

    def __init__(self, exe: str, profile: Path, timeout: float = 60):
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        self.timeout, self._buffer, self._next, self.events = timeout, b"", 0, []

        def wire():  # in the child: its ends on fds 3 and 4, moved up first so neither clobbers
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [
                exe,
                *HEADLESS_FLAGS,
                "--host-resolver-rules=MAP * ~NOTFOUND",
                "--proxy-server=127.0.0.1:9",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
            ],
            preexec_fn=wire,
            close_fds=False,  # fds 3 and 4 are set up in `wire`; ours are not inheritable
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self.session = None

    def send(self, method: str, **params):
        """The result of one DevTools command (in the page's session once :meth:`open` ran)."""
        self._next += 1
        message = {"id": self._next, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m: m.get("id") == self._next)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply.get("result", {})

    def _wait(self, done):
        import select

        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if done(message):
                    return message
                if "method" in message:
                    self.events.append(message)
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._in], [], [], left)[0], "browser timed out"
            chunk = os.read(self._in, 1 << 20)
            assert chunk, "the browser closed its pipe"
            self._buffer += chunk

    def open(self, url: str) -> None:
        """A new tab, offline, with every recorder on, at ``url`` once it has loaded."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable")
        self.send(
            "Network.emulateNetworkConditions",
            offline=True,
            latency=0,
            downloadThroughput=0,
            uploadThroughput=0,
        )
        self.send("Page.navigate", url=url)
        self._wait(lambda m: m.get("method") == "Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (an exception fails the test)."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse events) at the middle of the element ``selector``."""
        x, y = self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, selector: str, key: str) -> None:
        """Focus ``selector`` and press an arrow ``key`` on the keyboard."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        for kind in ("rawKeyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                type=kind,
                key=key,
                code=key,
                windowsVirtualKeyCode=ARROW_KEYS[key],
            )

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, browser log errors and warnings, and
        requests for anything not embedded (not a data: or file: URL), recorded so far."""
        self.evaluate("0")  # flush: the events before this answer are in
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                found.append(f"console {params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log: {params['entry']['text']}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("data:", "file:")):
                    found.append(f"request: {url}")
        return found

    def close(self) -> None:
        self.session = None
        try:
            self.send("Browser.close")
        except AssertionError:  # closed while answering
            pass
        finally:
            try:
                self.proc.wait(timeout=30)
            finally:
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait()
                os.close(self._in)
                os.close(self._out)


def trusted_intervals(ds, name: str = "ci_low") -> tuple[np.ndarray, np.ndarray]:
    """(interval bound of the values that can be trusted, of those that cannot) of results
    ``ds``: a value marked unreliable gets no bootstrap interval."""
    values = ds[name].values
    odd = np.broadcast_to(ds["unreliable"].values[..., None], values.shape)
    return values[~odd], values[odd]
