#!/usr/bin/env python3
"""Run edgeface's detect + embed on an emulated aarch64 CPU and compare with this (x86_64) machine.

No binfmt, no container, no root-owned system change: everything lands in one work folder.

1. Debian's arm64 packages of Python 3.11 (python3.11-minimal, libpython3.11-stdlib and the
   libraries they link) and the amd64 ``qemu-user-static`` are fetched with ``apt-get download``
   through a private apt configuration (its own package lists, in the work folder) and unpacked
   with ``dpkg-deb -x`` into ``<work>/sysroot`` and ``<work>/qemu``.
2. The aarch64 wheels of numpy, onnxruntime, ai-edge-litert, opencv-python-headless, pydantic,
   PyYAML, paho-mqtt and tqdm — the versions installed on this machine, so both sides run the same
   code — are fetched with ``pip download --platform ...`` and unzipped into ``<work>/site``.
3. ``tools/emulated_aarch64_probe.py`` runs once with this Python and once as
   ``qemu-aarch64-static -cpu CPU -L <sysroot> <sysroot>/usr/bin/python3.11`` (PYTHONPATH = the
   unpacked wheels + this checkout) on the same images; FP32 embeddings are compared and the INT8
   embedder's self-check must pass on the emulated CPU.

qemu-user 7.2 (bookworm) shows the guest the host's /proc/cpuinfo (x86 text). onnxruntime's
cpuinfo library finds no ARM core in it and crashes on import, so a /proc/cpuinfo as the emulated
board's kernel would print it is written to ``<sysroot>/proc/cpuinfo``: qemu's ``-L`` prefix is
looked up first for every absolute path the guest opens. Instruction-set features still come from
qemu's CPU model (``-cpu cortex-a72`` has no dot-product instructions, like a Pi 4;
``cortex-a76`` has them, like a Pi 5), so the INT8 kernels take the path the board would take.

    python tools/emulated_aarch64_check.py [--cpu cortex-a72 --cpu cortex-a76] [--count 4]

Exit status: 0 when every emulated CPU agrees with x86 within the tolerance and passes the INT8
self-check, 1 when one does not, 2 when the emulation could not be set up (the message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "tools" / "emulated_aarch64_probe.py"
DEFAULT_WORKDIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeface" / "aarch64-emu"
DEFAULT_LFW = Path("/work/shared/data/lfw/images")

ARM64_PACKAGES = (
    # python3.11-minimal + libpython3.11-stdlib and their Depends closure, less dpkg/perl/tar
    # (maintainer-script tools a folder that is never "installed" does not need).
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "media-types",
    "libc6", "libgcc-s1", "libstdc++6", "gcc-12-base", "zlib1g", "libexpat1", "libssl3", "libffi8",
    "libbz2-1.0", "liblzma5", "libzstd1", "libsqlite3-0", "libcrypt1", "libuuid1", "libdb5.3",
    "libgdbm6", "libgdbm-compat4", "libncursesw6", "libtinfo6", "libreadline8", "readline-common",
    "libnsl2", "libtirpc3", "libtirpc-common", "libgssapi-krb5-2", "libkrb5-3", "libkrb5support0",
    "libk5crypto3", "libcom-err2", "libkeyutils1", "libselinux1", "libpcre2-8-0", "libacl1", "libmd0",
)
WHEELS = ("numpy", "onnxruntime", "ai-edge-litert", "opencv-python-headless", "pydantic", "pyyaml", "paho-mqtt", "tqdm")
GLIBC_MINOR_MAX = 36  # Raspberry Pi OS bookworm's glibc (2.36); wheels needing a newer one would not load there

# What a board's kernel prints in /proc/cpuinfo (implementer 0x41 = Arm), per qemu CPU model.
CPUS: dict[str, tuple[str, str, str]] = {
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4"),
    "cortex-a76": (
        "0xd0b",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        "Raspberry Pi 5",
    ),
    "neoverse-n1": (
        "0xd0c",
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp",
        "close to Jetson Orin's Cortex-A78AE",
    ),
}


class SetupError(Exception):
    """The emulation could not be prepared; the message says which step and why."""


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, check=False, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise SetupError(f"`{' '.join(command[:4])} ...` failed (exit {result.returncode}): {' | '.join(tail)}")
    return result


def apt_environment(work: Path) -> tuple[dict[str, str], str]:
    """A private apt configuration (arm64 as the native architecture, plus the host's) whose package
    lists live in the work folder; and the host's architecture."""
    apt = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "status").touch()
    host = run(["dpkg", "--print-architecture"]).stdout.strip()
    (apt / "apt.conf").write_text(
        'APT::Architecture "arm64";\n'
        f'APT::Architectures {{ "{host}"; "arm64"; }};\n'
        f'Dir::State::Lists "{apt}/lists";\n'
        f'Dir::State::status "{apt}/status";\n'
        f'Dir::Cache "{apt}/cache";\n'
    )
    return {**os.environ, "APT_CONFIG": str(apt / "apt.conf")}, host


def prepare_sysroot(work: Path) -> tuple[Path, Path]:
    sysroot, qemu_root = work / "sysroot", work / "qemu"
    python = sysroot / "usr" / "bin" / "python3.11"
    qemu = qemu_root / "usr" / "bin" / "qemu-aarch64-static"
    if python.exists() and qemu.exists():
        return sysroot, qemu
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found: this tool needs a Debian or Ubuntu host")
    env, host = apt_environment(work)
    print("apt: updating the private arm64/amd64 package lists", file=sys.stderr)
    run(["apt-get", "update", "-q"], env=env)
    debs = work / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir()
    print(f"apt: downloading {len(ARM64_PACKAGES)} arm64 packages and qemu-user-static", file=sys.stderr)
    run(["apt-get", "download", "-q", *ARM64_PACKAGES, f"qemu-user-static:{host}"],
        env=env, cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        run(["dpkg-deb", "-x", str(deb), str(qemu_root if deb.name.startswith("qemu-user-static_") else sysroot)])
    if not python.exists() or not qemu.exists():
        raise SetupError(f"unpacked packages lack {python if not python.exists() else qemu}")
    shutil.rmtree(debs)
    return sysroot, qemu


def prepare_site(work: Path) -> Path:
    site = work / "site"
    wheels = work / "wheels"
    pins = []
    for name in WHEELS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise SetupError(f"{name} is not installed here; install edgeface first (pip install -e .)") from None
    stamp = site / ".pins"
    if stamp.exists() and stamp.read_text() == "\n".join(pins):
        return site
    shutil.rmtree(site, ignore_errors=True)
    shutil.rmtree(wheels, ignore_errors=True)
    platforms = [f"--platform=manylinux_2_{minor}_aarch64" for minor in range(17, GLIBC_MINOR_MAX + 1)]
    print(f"pip: downloading aarch64 wheels for {', '.join(pins)}", file=sys.stderr)
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--platform=manylinux2014_aarch64",
         *platforms, "--python-version=3.11", "--implementation=cp", "-d", str(wheels), *pins])
    site.mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    stamp.write_text("\n".join(pins))
    shutil.rmtree(wheels)
    return site


def write_cpuinfo(sysroot: Path, cpu: str) -> None:
    part, features, _ = CPUS[cpu]
    cores = len(os.sched_getaffinity(0))  # qemu-user shows the guest the host's /sys CPU topology
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
    )
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text("".join(block.format(i=i, features=features, part=part) for i in range(cores)))


def probe(command: list[str], env: dict[str, str], timeout_s: float) -> dict:
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SetupError(f"the probe did not finish within {timeout_s:.0f} s") from None
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        raise SetupError(f"the probe failed (exit {result.returncode}): {' | '.join(tail)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def max_abs(a: list | None, b: list | None) -> float:
    import numpy as np

    if a is None or b is None:
        return float("nan")
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.shape != second.shape:
        return float("inf")
    return float(np.abs(first - second).max()) if first.size else 0.0


def pick_images(lfw: Path, count: int) -> list[Path]:
    if not lfw.is_dir():
        raise SetupError(f"image folder {lfw} does not exist; pass --images or --lfw")
    found: list[Path] = []
    for person in sorted(lfw.iterdir()):
        found.extend(sorted(person.glob("*.jpg"))[:1])
        if len(found) >= count:
            break
    if not found:
        raise SetupError(f"no .jpg images under {lfw}/*/")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORKDIR, help=f"work folder (default {DEFAULT_WORKDIR})")
    parser.add_argument("--cpu", action="append", choices=sorted(CPUS), help="qemu CPU model (repeatable; default cortex-a72 and cortex-a76)")
    parser.add_argument("--images", type=Path, nargs="+", help="images to run (default: --count LFW images)")
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW, help=f"LFW images folder (default {DEFAULT_LFW})")
    parser.add_argument("--count", type=int, default=4, help="how many LFW images (default 4)")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest FP32 embedding difference allowed (default 1e-3)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per emulated run (default 900)")
    args = parser.parse_args(argv)
    cpus = args.cpu or ["cortex-a72", "cortex-a76"]
    try:
        images = [str(p) for p in (args.images or pick_images(args.lfw, args.count))]
        args.work.mkdir(parents=True, exist_ok=True)
        sysroot, qemu = prepare_sysroot(args.work)
        site = prepare_site(args.work)
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
        env.pop("PYTHONHOME", None)
        print(f"host: running the probe on {len(images)} images", file=sys.stderr)
        host = probe([sys.executable, str(PROBE), *images], env, args.timeout)
        emulated = {}
        for cpu in cpus:
            write_cpuinfo(sysroot, cpu)
            print(f"qemu: running the probe as aarch64 {cpu} (this takes a minute)", file=sys.stderr)
            arm_env = {**env, "PYTHONPATH": f"{site}{os.pathsep}{REPO}", "PYTHONNOUSERSITE": "1"}
            emulated[cpu] = probe(
                [str(qemu), "-cpu", cpu, "-L", str(sysroot), str(sysroot / "usr/bin/python3.11"), str(PROBE), *images],
                arm_env, args.timeout,
            )
    except SetupError as error:
        print(f"emulated_aarch64_check: error: {error}", file=sys.stderr)
        return 2

    def faces(result: dict) -> list[int]:
        return [len(image["boxes"]) for image in result["images"]]

    print(f"images: {len(images)} ({', '.join(Path(p).name for p in images)}); faces per image on x86: {faces(host)}")
    print(f"x86_64: python {host['python']}, onnxruntime {host['onnxruntime']}, "
          f"INT8 self-check distance {host['int8_selfcheck_distance']:.4f} (limit 0.15), {host['seconds']} s")
    ok = True
    for cpu, result in emulated.items():
        same_faces = faces(result) == faces(host)
        fp32 = max(max_abs(a["fp32"], b["fp32"]) for a, b in zip(host["images"], result["images"]))
        boxes = max(max_abs(a["boxes"], b["boxes"]) for a, b in zip(host["images"], result["images"]))
        int8 = max(max_abs(a["int8"], b["int8"]) for a, b in zip(host["images"], result["images"]))
        keypoints = max(max_abs(a["keypoints"], b["keypoints"]) for a, b in zip(host["images"], result["images"]))
        chips = sum(a["chips_sha256"] == b["chips_sha256"] for a, b in zip(host["images"], result["images"]))
        pixels = all(a["pixels_sha256"] == b["pixels_sha256"] for a, b in zip(host["images"], result["images"]))
        passed = (
            result["machine"] == "aarch64" and same_faces and fp32 <= args.tolerance
            and result["int8_precision"] == "int8" and result["int8_selfcheck_distance"] is not None
        )
        ok &= passed
        selfcheck = result["int8_selfcheck_distance"]
        print(
            f"{result['machine']} {cpu} ({CPUS[cpu][2]}; dot-product instructions "
            f"{'yes' if result.get('arm_dotprod') else 'no'}): python {result['python']}, "
            f"decoded pixels {'identical' if pixels else 'DIFFER'}, faces {'same' if same_faces else 'DIFFER'}, "
            f"box max diff {boxes:.2e} px, keypoint max diff {keypoints:.2e} px, "
            f"chips identical {chips}/{len(images)}, FP32 embedding max diff {fp32:.2e} (limit {args.tolerance:g}), "
            f"INT8 self-check {'passed, distance ' + format(selfcheck, '.4f') if selfcheck is not None else 'FAILED (fell back to FP32)'}, "
            f"INT8 embedding max diff vs x86 INT8 {int8:.2e}, {result['seconds']} s -> {'ok' if passed else 'FAIL'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
