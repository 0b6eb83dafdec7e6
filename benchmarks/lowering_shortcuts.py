"""The XNNPACK lowering with edgeqat's shortcuts (export/lowering_shortcuts.py) against ExecuTorch's full path, side by side.

    edgeqat run                                   # or any `edgeqat convert` output
    python benchmarks/lowering_shortcuts.py edgeqat-out/converted --rounds 2

Traces the converted model once per lowering, as `edgeqat export` does, then lowers it alternately with the
shortcuts on (XNNPACK passes that match nothing skipped, one decomposition pass, the edge passes fused,
subgraphs preprocessed in one process per core) and off, ``--rounds`` times.
Prints the lowering and serialisation seconds of each and their medians, checks the `.pte` bytes are the same,
and writes the table as JSON (``--json``, default lowering_shortcuts.json).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

from edgeqat.artifacts import versions, write_json_atomic
from edgeqat.export.kv_cache import export_decoder, program_decoder
from edgeqat.export.lower import lower_to_xnnpack
from edgeqat.export.rope import rotation_as_linear
from edgeqat.train.convert import load_converted, read_checked_record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("converted", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--json", type=Path, default=Path("lowering_shortcuts.json"))
    args = parser.parse_args(argv)

    record = read_checked_record(args.converted, "convert")
    model, _, _ = load_converted(args.converted, record)
    runs, programs = [], {}
    for round_ in range(args.rounds):
        for shortcuts in (True, False):
            decoder = program_decoder(copy.deepcopy(model), args.max_seq_len)
            with rotation_as_linear(decoder, model.config):
                program = export_decoder(decoder, args.max_seq_len)
            start = time.perf_counter()
            lowered = lower_to_xnnpack(program, {"get_max_seq_len": args.max_seq_len}, shortcuts=shortcuts)
            total = time.perf_counter() - start
            runs.append({"round": round_, "shortcuts": shortcuts, **lowered.seconds, "total": round(total, 2),
                         "pte_bytes": len(lowered.program)})
            print(f"round {round_} shortcuts {'on ' if shortcuts else 'off'}  lowering {lowered.seconds['lowering']:7.1f} s"
                  f"  serialization {lowered.seconds['serialization']:5.1f} s", flush=True)
            programs.setdefault(shortcuts, lowered.program)
            if lowered.program != programs[shortcuts] or (len(programs) == 2 and programs[True] != programs[False]):
                print("the .pte bytes differ between lowerings", file=sys.stderr)
                return 1

    def median(shortcuts: bool, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["shortcuts"] is shortcuts)

    on, off = median(True, "lowering"), median(False, "lowering")
    print(f"median lowering: shortcuts on {on:.1f} s, off {off:.1f} s ({off / on:.2f}x); .pte bytes identical")
    write_json_atomic(args.json, {"converted": args.converted.name, "max_seq_len": args.max_seq_len,
                                  "versions": versions(), "runs": runs, "median_lowering_on": on,
                                  "median_lowering_off": off, "speedup": round(off / on, 3),
                                  "pte_identical": True})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
