"""`python -m benchmarks NAME [options]` runs one benchmark; `python -m benchmarks all [options]` runs the issue-6
set one after the other (each in its own process, the options passed to every one); `--list` names them."""

from __future__ import annotations

import importlib
import subprocess
import sys

from benchmarks import common

#: The issue-6 benchmarks, in the order `all` runs them (about 20 minutes in all on 2 CPU cores).
BENCHMARKS = ("train_step", "loader", "extraction", "inference", "storage", "amortisation")
#: The paper-size benchmark for one GPU (issue 16.5; `--tiny` on the CPU), not part of `all`.
GPU = ("paper",)
#: Benchmarks of other stages, runnable through this entry point too (not part of `all`).
OTHERS = ("store_layout", "augment_placement", "extractor_quality", "remote", "read_path", "finite_check", "views",
          "threads")


def _run(name: str, argv: list[str]) -> None:
    module = importlib.import_module(f"benchmarks.{name}")
    common.set_command(["python", "-m", "benchmarks", name, *argv])
    if name in BENCHMARKS + GPU:
        module.main(argv)
        return
    sys.argv = [module.__file__ or name, *argv]  # scripts that parse sys.argv themselves
    module.main()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "--list"):
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHMARKS), "| paper-size (GPU):", ", ".join(GPU), "| others:",
              ", ".join(OTHERS), "| all")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        failed = []
        for bench in BENCHMARKS:
            common.say(f"== {bench}")
            rc = subprocess.run([sys.executable, "-m", "benchmarks", bench, *rest]).returncode
            if rc:
                failed.append(bench)
        if failed:
            common.say(f"failed: {', '.join(failed)}")
        return 1 if failed else 0
    if name not in BENCHMARKS + GPU + OTHERS:
        print(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS + GPU + OTHERS)} or all",
              file=sys.stderr)
        return 2
    _run(name, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
