"""What the Triton integration test (test_triton.py) and the load figures
(bench/triton_load.py) share: finding the Triton server that the
nvidia-pytriton wheel bundles and the tritonclient package in the project's
.venv (.ci/deps installs both), writing a model repository, starting and
stopping the server on loopback ports, reading Fashion-MNIST as `exitrt run`
reads it."""
import gzip
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time

SKIP = 77  # CTest's SKIP_RETURN_CODE


def ensure_client(source_dir):
    """Returns None when tritonclient.http imports here; else re-executes
    the calling script under <source>/.venv/bin/python when that has it,
    else returns the reason to skip."""
    try:
        import tritonclient.http  # noqa: F401
        return None
    except ImportError as e:
        why = str(e)
    venv_py = os.path.join(source_dir, ".venv", "bin", "python")
    if os.path.exists(venv_py) and os.path.realpath(sys.prefix) != os.path.realpath(
            os.path.join(source_dir, ".venv")):
        os.execv(venv_py, [venv_py] + sys.argv)
    return f"tritonclient[http] is not importable ({why}); .ci/deps installs it into .venv"


def find_tritonserver():
    """(binary, library dirs) of the server in the nvidia-pytriton wheel, or
    (None, reason)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None, "the nvidia-pytriton wheel (which bundles tritonserver) is not installed; " \
                     ".ci/deps installs it into .venv"
    pkg = list(spec.submodule_search_locations)[0]
    binary = os.path.join(pkg, "tritonserver", "bin", "tritonserver")
    if not os.access(binary, os.X_OK):
        return None, f"{binary} is missing"
    site = os.path.dirname(pkg)
    libs = [d for d in (os.path.join(pkg, "tritonserver", "lib"),
                        os.path.join(site, "nvidia_pytriton.libs")) if os.path.isdir(d)]
    return binary, libs


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serving_config(source_dir):
    """The config.pbtxt that docs/SERVING.md shows (its first ```protobuf
    block): the one the tests serve."""
    text = open(os.path.join(source_dir, "docs", "SERVING.md"), encoding="utf-8").read()
    m = re.search(r"```protobuf\n(.*?)```", text, re.S)
    if not m:
        raise RuntimeError("docs/SERVING.md has no ```protobuf block (the config.pbtxt)")
    return m.group(1)


def variant(config, name, mode=None, params=None, replace=None):
    """The documented config with another model name, mode and extra
    parameters (key -> string value), and text replacements."""
    c = config
    c, n = re.subn(r'^name: "[^"]*"', f'name: "{name}"', c, count=1, flags=re.M)
    assert n == 1, "the documented config has no name line"
    if mode:
        c, n = re.subn(r'(key: "mode", value: \{ string_value: ")[a-z]+(")', rf"\g<1>{mode}\2", c)
        assert n == 1, "the documented config has no mode parameter"
    for old, new in (replace or {}).items():
        assert old in c, f"'{old}' is not in the documented config"
        c = c.replace(old, new)
    for k, v in (params or {}).items():
        if re.search(rf'key: "{k}"', c):
            c, n = re.subn(rf'(key: "{k}", value: \{{ string_value: ")[^"]*(")', rf"\g<1>{v}\2", c)
            assert n == 1
        else:
            c += f'parameters {{ key: "{k}", value: {{ string_value: "{v}" }} }}\n'
    return c


def add_model(repo, name, config, model_dir=None):
    """repo/name/config.pbtxt and, when model_dir is given, repo/name/1 a
    symlink to the exitrt model's directory (the default model_path: the
    version folder; the weights must lie inside it, models/FORMAT.md)."""
    d = os.path.join(repo, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(config)
    v = os.path.join(d, "1")
    if model_dir and not os.path.lexists(v):
        os.symlink(os.path.abspath(model_dir), v)
    else:
        os.makedirs(v, exist_ok=True)


class Server:
    """tritonserver on 127.0.0.1 (HTTP and metrics; no gRPC), models loaded
    explicitly."""

    def __init__(self, binary, libs, repo, backends, log_path, models, extra=()):
        self.port, self.metrics_port = free_port(), free_port()
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [env.get("LD_LIBRARY_PATH", "")])
        self.cmd = [binary, "--model-repository", repo, "--backend-directory", backends,
                    "--http-address", "127.0.0.1", "--http-port", str(self.port),
                    "--allow-grpc", "false", "--metrics-address", "127.0.0.1",
                    "--metrics-port", str(self.metrics_port), "--allow-gpu-metrics", "false",
                    "--model-control-mode", "explicit", "--exit-timeout-secs", "20"]
        for m in models:
            self.cmd += ["--load-model", m]
        self.cmd += list(extra)
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout=120):
        import urllib.request
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode} while "
                                   f"starting; log:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.time() - t0
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"tritonserver not ready after {timeout} s; log:\n"
                           f"{self.log_text()[-3000:]}")

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=10) as r:
            return r.read().decode()

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        return open(self.log_path, encoding="utf-8", errors="replace").read()

    def stop(self, timeout=60):
        """SIGTERM, then the exit status (killed after timeout: None)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                return None
        self.log.close()
        return self.proc.returncode


def load_idx_images(path):
    """uint8 IDX images as float32 [N, 1, H, W] in raw units (0..255), as
    `exitrt run` reads them (the model applies its own scaling)."""
    op = gzip.open if path.endswith(".gz") else open
    with op(path, "rb") as f:
        raw = f.read()
    import numpy as np
    magic = int.from_bytes(raw[0:4], "big")
    if magic != 0x00000803:
        raise RuntimeError(f"{path}: not IDX uint8 images (magic {magic:#x})")
    n, h, w = (int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
    return np.frombuffer(raw, np.uint8, offset=16, count=n * h * w).reshape(n, 1, h, w).astype(
        np.float32)


def sample_data(model_dir):
    """The images file the model.json names (sample_data), joined with the model dir."""
    import json
    m = json.load(open(os.path.join(model_dir, "model.json")))
    return os.path.normpath(os.path.join(model_dir, m["sample_data"]))
