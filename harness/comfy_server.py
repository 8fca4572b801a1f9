"""Start a real ComfyUI headless on loopback with this pack linked in, talk to it over HTTP, stop it.

Standard library only, so the run script, the tests and the benchmarks share it. The server runs
`<comfyui>/main.py --cpu` (unless `gpu=True`) with every writable folder under `work/`.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import hostenv

PACK_FOLDER = "comfyui-diffusion-anatomy"  # the name users clone the pack under


class ComfyError(RuntimeError):
    """ComfyUI refused or failed a prompt; the message carries ComfyUI's own error text."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(self, process: subprocess.Popen, port: int, work: Path, log: Path):
        self.process, self.port, self.work, self.log = process, port, work, log
        self.url = f"http://127.0.0.1:{port}"
        self.client_id = uuid.uuid4().hex

    @classmethod
    def start(cls, work: Path, port: int | None = None, checkpoints: list[Path] = (), loras: list[Path] = (),
              controlnet: list[Path] = (), gpu: bool = False, front_end_root: Path | None = None,
              threads: int | None = None, timeout: float = 180.0) -> "ComfyServer":
        """`threads`: torch's CPU threads in the server (OMP_NUM_THREADS), default torch's own choice."""
        comfy_dir = hostenv.comfyui_dir()
        if not (comfy_dir / "main.py").is_file():
            raise RuntimeError(f"no ComfyUI at {comfy_dir}: run host/install.sh (or set COMFYUI_PATH)")
        port = port or free_port()
        if port_in_use(port):
            raise RuntimeError(f"port {port} on 127.0.0.1 is already in use; choose another (--port)")
        work = Path(work).resolve()
        for sub in ("output", "input", "temp", "user", "custom_nodes", "models/checkpoints", "models/loras", "models/controlnet"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        link = work / "custom_nodes" / PACK_FOLDER
        if not link.exists():
            link.symlink_to(hostenv.REPO, target_is_directory=True)
        folders = {"checkpoints": [work / "models/checkpoints", *checkpoints], "loras": [work / "models/loras", *loras],
                   "controlnet": [work / "models/controlnet", *controlnet]}
        yaml = work / "extra_model_paths.yaml"
        yaml.write_text(
            "diffusion_anatomy:\n"
            f"  custom_nodes: {work / 'custom_nodes'}\n"
            + "".join(f"  {kind}: |\n" + "".join(f"    {Path(d).resolve()}\n" for d in dirs) for kind, dirs in folders.items())
        )
        log = work / "comfyui.log"
        cmd = [hostenv.python(), str(comfy_dir / "main.py"), "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", "--extra-model-paths-config", str(yaml),
               "--output-directory", str(work / "output"), "--input-directory", str(work / "input"),
               "--temp-directory", str(work / "temp"), "--user-directory", str(work / "user"),
               "--database-url", "sqlite:///:memory:", "--disable-api-nodes"]
        if not gpu:
            cmd.append("--cpu")
        if front_end_root:  # another frontend than the pinned package (host/install_frontend.sh fetches one)
            cmd += ["--front-end-root", str(front_end_root)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if threads:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=comfy_dir, env=env,
                                       start_new_session=True)
        server = cls(process, port, work, log)
        server._wait_ready(timeout)
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get("/object_info/CheckpointLoaderSimple")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /object_info within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server by its PID (never by name)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    # --- HTTP ---
    def request(self, path: str, data: dict | None = None, method: str | None = None):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"} if body else {})
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw

    def get(self, path: str):
        return self.request(path)

    def queue(self, graph: dict) -> str:
        """POST /prompt; returns the prompt id or raises ComfyError with ComfyUI's validation text."""
        try:
            reply = self.request("/prompt", {"prompt": graph, "client_id": self.client_id})
        except urllib.error.HTTPError as e:
            detail = json.loads(e.read() or b"{}")
            raise ComfyError(describe_validation_error(detail), detail) from None
        return reply["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt ends; returns its history entry or raises ComfyError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            except TimeoutError:  # a server busy loading a model on a loaded machine answers late; ask again
                continue
            if entry and entry.get("status", {}).get("completed") is not None and entry["status"].get("status_str") in ("success", "error"):
                if entry["status"]["status_str"] == "error":
                    raise ComfyError(describe_execution_error(entry), entry)
                return entry
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout:.0f} s")

    def run(self, graph: dict, timeout: float = 600.0) -> dict:
        """Queue a graph, wait for it, return {node_id: outputs}."""
        return self.wait(self.queue(graph), timeout)["outputs"]

    def output_files(self, outputs: dict, kind: str = "images") -> list[Path]:
        files = []
        for node_out in outputs.values():
            for item in node_out.get(kind, []):
                base = {"output": "output", "temp": "temp", "input": "input"}[item.get("type", "output")]
                files.append(self.work / base / item.get("subfolder", "") / item["filename"])
        return files

    def saved_files(self, outputs: dict) -> list[Path]:
        """The pictures written to the output folder (SaveImage), without those nodes only show (temp)."""
        return [f for f in self.output_files(outputs) if f.parent.relative_to(self.work).parts[0] == "output"]


def describe_validation_error(detail: dict) -> str:
    err = detail.get("error", {})
    parts = [f"{err.get('message', 'prompt rejected')}: {err.get('details', '')}".strip()]
    for node_id, ne in (detail.get("node_errors") or {}).items():
        for e in ne.get("errors", []):
            parts.append(f"node {node_id} ({ne.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(parts)


def describe_execution_error(entry: dict) -> str:
    for kind, msg in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"node {msg.get('node_id')} ({msg.get('node_type')}): {msg.get('exception_type')}: {msg.get('exception_message')}"
        if kind == "execution_interrupted":
            return f"interrupted at node {msg.get('node_id')} ({msg.get('node_type')})"
    return "execution failed"
