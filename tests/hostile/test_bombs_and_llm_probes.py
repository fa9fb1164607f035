"""Issue 22 hostile probes, findings 3, 4, 7, 8 (slow tier): the real CLIs in subprocesses against memory bombs
and a hostile loopback LLM server, each bounded in time (timeouts) and memory (RLIMIT_DATA, peak RSS reported).

Every probe compares the peak RSS of the refused run with a good run of the same command measured in the same
test, so "refused before allocating" means "no more memory than a normal small run", not a guessed constant.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
DATA_LIMIT = 3 << 30  # a child that tries to allocate a bomb's 4 GB dies of MemoryError, not the machine
LAUNCHER = """
import resource, runpy, sys
module = sys.argv[1]
sys.argv = [module] + sys.argv[2:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    print(f"MAXRSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def run_cli(module: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k != "LD_AUGMENT_MAX_MEMORY_GB"}
    environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {}))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, module, *args], capture_output=True, text=True,
                          timeout=timeout, env=environ, cwd=str(REPO),
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (DATA_LIMIT, DATA_LIMIT)))
    lines = proc.stderr.strip().splitlines()
    rss = [int(ln.split("=")[1]) for ln in lines if ln.startswith("MAXRSS_KB=")]
    errors = [ln for ln in lines if not ln.startswith("MAXRSS_KB=")]
    return {"rc": proc.returncode, "err": errors, "out": proc.stdout, "rss_mb": rss[0] / 1024 if rss else None,
            "seconds": time.monotonic() - t0}


def error_line(result: dict[str, Any]) -> str:
    """The one line a refused command prints (progress tables and warnings aside)."""
    lines = [ln for ln in result["err"] if ": error: " in ln]
    assert len(lines) == 1, result["err"]
    assert not any("Traceback" in ln for ln in result["err"]), result["err"]
    return lines[0]


def make_case(folder: Path, name: str = "case_a") -> tuple[Path, Path]:
    """A 40^3 CT of 2 mm voxels with an ellipsoid liver, and its segmentation (liver = 5)."""
    grid = np.indices((40, 40, 40)).astype(float)
    liver = (((grid - 20) / np.array([14, 11, 9]).reshape(3, 1, 1, 1)) ** 2).sum(0) <= 1
    ct = np.full((40, 40, 40), -1000, np.int16)
    ct[4:-4, 4:-4, 4:-4] = 30
    ct[liver] = 60
    ct[20, 3:6, 20] = 700
    ct = ct + np.random.default_rng(len(name)).integers(0, 10, ct.shape, dtype=np.int16)
    (folder / "cts").mkdir(parents=True, exist_ok=True)
    (folder / "segs").mkdir(parents=True, exist_ok=True)
    ct_path, seg_path = folder / "cts" / f"{name}.nii.gz", folder / "segs" / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(ct, AFFINE), str(ct_path))
    nib.save(nib.Nifti1Image(np.where(liver, 5, 0).astype(np.uint8), AFFINE), str(seg_path))
    return ct_path, seg_path


def seg_bomb(path: Path) -> Path:
    """The probe's 201-byte segmentation: a gzip NIfTI header claiming 2000x2000x1000 uint8 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 1000))
    header.set_data_dtype(np.uint8)
    header.set_sform(AFFINE, code=1)
    header.set_data_offset(352)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 68))
    return path


def _recipe(tmp_path: Path, **extra: Any) -> Path:
    data = {"sources": {"folder": str(tmp_path / "cts"), "segmentations": str(tmp_path / "segs")},
            "organs": ["liver"], "lesion_types": ["liver cyst"], "spacing": 2.0, "segmentation": "error",
            "dataset_name": "HostileBank", **extra}
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(data))
    return path


def _preprocess(ct: Path, seg: Path, out: Path) -> list[str]:
    return ["preprocess", "--image", str(ct), "--seg", str(seg), "--organ", "liver", "--lesion-type", "liver cyst",
            "--spacing", "2", "--out", str(out)]


# ------------------------------------------------------------------------------------------- memory bombs
def test_segmentation_bomb_is_refused_at_the_header_with_baseline_memory(tmp_path):
    ct, seg = make_case(tmp_path)
    good = run_cli("ld_augment.cli.main", *_preprocess(ct, seg, tmp_path / "good"))
    assert good["rc"] == 0, good["err"]
    bomb = run_cli("ld_augment.cli.main", *_preprocess(ct, seg_bomb(tmp_path / "bomb.nii.gz"), tmp_path / "bad"))
    print(f"good preprocess: {good['rss_mb']:.0f} MB, {good['seconds']:.1f} s; "
          f"segmentation bomb: {bomb['rss_mb']:.0f} MB, {bomb['seconds']:.1f} s")
    assert bomb["rc"] == 2
    line = error_line(bomb)
    assert "bomb.nii.gz" in line and "cannot hold" in line
    assert bomb["rss_mb"] <= good["rss_mb"] + 100


def test_implausible_field_of_view_is_refused_before_resampling(tmp_path):
    """The probe's CT: 122x101x30 voxels of 15 mm (1.8 m x 1.5 m); it was resampling towards 5 GB after 60 s."""
    ct = np.full((122, 101, 30), -1000, np.int16)
    ct[30:90, 30:70, 5:25] = 50
    ct[60, 50, 15] = 800
    path = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.diag([15.0, 15.0, 15.0, 1.0])), str(path))
    seg = tmp_path / "coarse_seg.nii.gz"
    nib.save(nib.Nifti1Image((ct == 50).astype(np.uint8) * 5, np.diag([15.0, 15.0, 15.0, 1.0])), str(seg))
    result = run_cli("ld_augment.cli.main", *_preprocess(path, seg, tmp_path / "case"), timeout=60)
    assert result["rc"] == 2 and result["seconds"] < 30
    assert "1830 x 1515 x 450 mm" in error_line(result)


def test_billion_laughs_and_huge_plans_are_refused_in_seconds(tmp_path):
    make_case(tmp_path)
    laughs = tmp_path / "laughs.yaml"
    lines = ["sources: {folder: cts, segmentations: segs}", "organs: [liver]", "lesion_types: [liver cyst]",
             "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
    lines.append("lesions_per_case: *i")
    laughs.write_text("\n".join(lines) + "\n")
    result = run_cli("synthesis_bank.cli", "build", "--recipe", str(laughs), "--out", str(tmp_path / "b1"),
                     "--no-progress", timeout=60)
    assert result["rc"] == 2 and result["seconds"] < 30 and "anchors and aliases" in error_line(result)

    huge = _recipe(tmp_path, variants_per_source=1_000_000_000_000)
    result2 = run_cli("synthesis_bank.cli", "build", "--recipe", str(huge), "--out", str(tmp_path / "b2"),
                      "--no-progress", timeout=60)
    print(f"billion laughs: {result['rss_mb']:.0f} MB {result['seconds']:.1f} s; "
          f"10^12 variants: {result2['rss_mb']:.0f} MB {result2['seconds']:.1f} s")
    assert result2["rc"] == 2 and "at most 10000" in error_line(result2)
    assert max(result["rss_mb"], result2["rss_mb"]) < 1500
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()


def test_bank_case_with_a_bomb_segmentation_fails_alone(tmp_path):
    make_case(tmp_path, "case_a")
    make_case(tmp_path, "case_b")
    seg_bomb(tmp_path / "segs" / "case_b.nii.gz")
    out = tmp_path / "bank"
    result = run_cli("synthesis_bank.cli", "build", "--recipe", str(_recipe(tmp_path)), "--out", str(out),
                     "--no-progress", timeout=300)
    print(f"bank with one bomb: rc {result['rc']}, {result['rss_mb']:.0f} MB, {result['seconds']:.1f} s")
    assert result["rc"] == 1, result["err"]
    entries = {e["case_id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert entries["case_a_syn000"]["status"] == "ok"
    assert entries["case_b_syn000"]["status"] != "ok" and "cannot hold" in json.dumps(entries["case_b_syn000"])
    assert result["rss_mb"] < 2000


# ------------------------------------------------------------------------------------------- a hostile LLM
GOOD_ANSWER = {
    "enhancement_status": "enhanced ct", "shape": ["round-like"], "density": "hypodense lesion",
    "density_variations": "homogeneous", "surface_characteristics": "well-defined margin",
    "relationship_with_adjacent_organs": "no close relationship with surrounding organs",
    "specific_features": [], "cavity": "within the parenchymal organ", "size": [6, 6, 5], "ct_value": 10.0,
}


class _Handler(BaseHTTPRequestHandler):
    mode = "drip"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests += 1  # type: ignore[attr-defined]
        answer = {**GOOD_ANSWER, "size": [10000, 6, 5]} if self.mode == "absurd" else GOOD_ANSWER
        if self.mode == "extra":
            answer = {**GOOD_ANSWER, "diagnosis": "benign"}
        body = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": json.dumps(answer)}}]
        }).encode()
        length = 200 << 20 if self.mode == "huge" else len(body)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(length))
        self.end_headers()
        try:
            if self.mode == "drip":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    if self.server.stop.wait(1.0):  # type: ignore[attr-defined]
                        return
            elif self.mode == "huge":  # 200 MB, streamed: a client without a limit would hold it all
                chunk = b" " * (1 << 20)
                for _ in range(200):
                    self.wfile.write(chunk)
            else:
                self.wfile.write(body)
        except OSError:
            pass


@pytest.fixture
def llm_server(request):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"mode": request.param}))
    httpd.daemon_threads, httpd.requests, httpd.stop = True, 0, threading.Event()
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


def _llm_build(tmp_path: Path, httpd, *flags: str, timeout: float = 180) -> dict[str, Any]:
    make_case(tmp_path)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    recipe = _recipe(tmp_path, report_writer={"llm": {"base_url": url, "model": "m"}})
    return run_cli("synthesis_bank.cli", "build", "--recipe", str(recipe), "--out", str(tmp_path / "bank"),
                   "--no-progress", *flags, timeout=timeout, env={"OPENAI_API_KEY": "sk-hostile-SECRET-42"})


@pytest.mark.parametrize("llm_server", ["drip"], indirect=True)
def test_slow_drip_llm_stops_the_build_within_the_deadline(tmp_path, llm_server):
    result = _llm_build(tmp_path, llm_server, "--llm-timeout", "3", "--llm-retries", "1")
    print(f"drip server: rc {result['rc']} after {result['seconds']:.1f} s, {llm_server.requests} requests")
    assert result["rc"] == 2 and llm_server.requests == 2
    assert result["seconds"] < 2 * 3 + 1 + 40  # two 3 s attempts and a 1 s backoff, plus start-up and imports
    line = error_line(result)
    assert "deadline" in line and "sk-hostile-SECRET-42" not in "\n".join(result["err"]) + result["out"]


@pytest.mark.parametrize("llm_server", ["absurd", "extra", "huge"], indirect=True)
def test_unusable_llm_answers_fail_the_case_never_clamped(tmp_path, llm_server):
    result = _llm_build(tmp_path, llm_server, "--llm-timeout", "20", "--llm-retries", "1")
    words = {"absurd": "larger than the organ", "extra": "keys the schema does not allow",
             "huge": "exceeded 64 KB"}[llm_server.RequestHandlerClass.mode]
    print(f"{llm_server.RequestHandlerClass.mode} answers: rc {result['rc']}, {result['rss_mb']:.0f} MB, "
          f"{result['seconds']:.1f} s")
    assert result["rc"] in (1, 2), result["err"]
    manifest = tmp_path / "bank" / "manifest.jsonl"
    text = manifest.read_text() if manifest.exists() else ""
    assert words in text + "\n".join(result["err"])
    assert '"status": "ok"' not in text
    assert not list((tmp_path / "bank").glob("imagesTr/*.nii.gz"))
    assert result["rss_mb"] < 2000


@pytest.mark.parametrize("llm_server", ["good"], indirect=True)
def test_control_a_sane_llm_answer_builds_the_case(tmp_path, llm_server):
    """The negative control of the probes above: the same server and build with a usable answer succeed."""
    result = _llm_build(tmp_path, llm_server, "--llm-timeout", "20", "--llm-retries", "1")
    assert result["rc"] == 0, result["err"]
    assert llm_server.requests == 1 and len(list((tmp_path / "bank").glob("imagesTr/*.nii.gz"))) == 1
