"""The memory free for new use, as a process in a container sees it: a real cgroup v1 memory limit set on a group
made here, above the group a child process runs in; cgroup v2 as a service manager and a container lay it out,
written as the kernel documents its files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ernie_nf4.host_memory import available_memory, cgroup_free
from ernie_nf4.package.read_ahead import read_ahead

MB = 2**20


def v1_memory_group() -> Path | None:
    """This process's own group in a cgroup v1 memory hierarchy: the folder whose ``cgroup.procs`` lists it."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
        paths = [line.split(":", 2) for line in Path("/proc/self/cgroup").read_text().splitlines()]
    except OSError:
        return None
    for _, point, kind, options, *_ in mounts:
        if kind != "cgroup" or "memory" not in options.split(","):
            continue
        for _, controllers, path in paths:
            folder = Path(point + path)
            if "memory" in controllers.split(",") and (folder / "cgroup.procs").is_file():
                if str(os.getpid()) in (folder / "cgroup.procs").read_text().split():
                    return folder
    return None


@pytest.fixture
def limited_groups():
    """``(outer, inner)``: a new memory group with a 192 MB limit below this process's own, and one without a limit
    inside it; removed afterwards."""
    own = v1_memory_group() if sys.platform.startswith("linux") else None
    if own is None:
        pytest.skip("no cgroup v1 memory hierarchy holds this process")
    outer, inner = own / f"ernie-nf4-test-{os.getpid()}", own / f"ernie-nf4-test-{os.getpid()}" / "inner"
    try:
        try:
            inner.mkdir(parents=True)
            (outer / "memory.limit_in_bytes").write_text(str(192 * MB))
        except OSError as err:
            pytest.skip(f"cannot make a memory cgroup here: {err}")
        yield outer, inner
    finally:
        for folder in (inner, outer):
            for _ in range(50):  # a group is removable once its last process has gone
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def run_in(group: Path, code: str) -> str:
    """Run ``code`` in a new Python process that joins ``group`` before it starts."""
    script = f'echo $$ > "{group}/cgroup.procs" && exec "{sys.executable}" -c "$0"'
    done = subprocess.run(["sh", "-c", script, code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_limit_on_a_parent_group_holds_for_a_process_below_it_and_stops_a_read_ahead(limited_groups, tmp_path):
    outer, inner = limited_groups
    package = tmp_path / "package"
    (package / "vae").mkdir(parents=True)
    (package / "model_index.json").write_text('{"_class_name": "ErnieImagePipeline", "vae": ["diffusers", "M"]}')
    with open(package / "vae" / "diffusion_pytorch_model.safetensors", "wb") as f:
        f.write(os.urandom(120 * MB))  # more than half of what is left under the limit
    here = read_ahead(package)
    here.stop()
    assert here.files, "with this machine's free memory the files are read"
    code = (
        "from ernie_nf4.host_memory import available_memory; from ernie_nf4.package.read_ahead import read_ahead;"
        f"print(available_memory(), len(read_ahead({str(package)!r}).files))"
    )
    free, files = map(int, run_in(inner, code).split())
    used = int((outer / "memory.usage_in_bytes").read_text())
    assert 100 * MB < free <= 192 * MB, free  # the outer group's limit, less what the child uses
    assert files == 0
    assert used < 192 * MB


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_cgroup_v2_limits_of_a_service_and_its_slice_count_inactive_file_cache_as_free(tmp_path):
    proc, mount = tmp_path / "proc", tmp_path / "sys fs cgroup"  # a space: mountinfo writes it as \040
    write_tree(
        proc,
        {
            "meminfo": "MemTotal:       67108864 kB\nMemAvailable:   33554432 kB\n",
            "self/cgroup": "0::/system.slice/app.service\n",
            "self/mountinfo": (
                "24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
                f"35 24 0:30 / {str(mount).replace(' ', chr(92) + '040')} rw,nosuid - cgroup2 cgroup2 rw\n"
            ),
        },
    )
    write_tree(
        mount,
        {  # the root group has no limit files; the slice is limited, the service inside it not
            "cgroup.controllers": "cpu memory pids\n",
            "system.slice/memory.max": f"{1024 * MB}\n",
            "system.slice/memory.current": f"{600 * MB}\n",
            "system.slice/memory.stat": f"anon {400 * MB}\nfile {200 * MB}\ninactive_file {100 * MB}\n",
            "system.slice/app.service/memory.max": "max\n",
            "system.slice/app.service/memory.current": f"{300 * MB}\n",
        },
    )
    with open(proc / "self" / "mountinfo", "ab") as f:  # a disk elsewhere whose mount point is not UTF-8
        f.write(b"50 24 8:17 / /media/caf\xe9 rw,relatime shared:30 - ext4 /dev/sdb1 rw\n")
    assert cgroup_free(proc) == (1024 - 500) * MB
    assert available_memory(proc) == (1024 - 500) * MB  # below the machine's 32 GB available
    (mount / "system.slice/app.service/memory.max").write_text(f"{256 * MB}\n")  # now the service is tighter
    assert cgroup_free(proc) == 0  # it uses more than its limit: nothing is free
    (mount / "system.slice/app.service/memory.max").write_text(f"{512 * MB}\n")
    assert available_memory(proc) == 212 * MB


def test_in_a_container_its_own_group_is_the_root_it_sees(tmp_path):
    proc, mount = tmp_path / "proc", tmp_path / "cgroup"
    write_tree(
        proc,
        {
            "meminfo": "MemAvailable:   33554432 kB\n",
            "self/cgroup": "0::/\n",
            "self/mountinfo": f"40 30 0:31 / {mount} rw - cgroup2 cgroup2 rw\n",
        },
    )
    write_tree(mount, {"memory.max": f"{4096 * MB}\n", "memory.current": f"{1024 * MB}\n"})
    assert available_memory(proc) == 3072 * MB
    (mount / "memory.max").write_text("max\n")  # no limit: the machine's figure
    assert available_memory(proc) == 32 * 1024 * MB
