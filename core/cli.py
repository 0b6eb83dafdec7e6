"""The `edgeqat` command: a thin layer over the stage functions.

User errors print one line and exit non-zero (2; 3 when a check threshold fails); --debug shows the
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from edgeqat import __version__
from edgeqat.config import FAKE_QUANT_KERNELS, LORA_FAKE_QUANT, MODES, REFERENCE_DEVICES, STUDY_ARMS
from edgeqat.errors import EdgeqatError, Terminated

log = logging.getLogger("edgeqat")


def _quiet_libraries(debug: bool) -> None:
    """torch/torchao/transformers warn loudly about things a user cannot act on; keep them for --debug.

    Without a terminal (pipelines, CI logs) the libraries' progress bars are off too: edgeqat logs progress
    as lines of its own.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        if "datasets" in sys.modules:
            sys.modules["datasets"].disable_progress_bars()
        import transformers.utils.logging

        transformers.utils.logging.disable_progress_bar()
    if debug:
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch  # noqa: F401  torch configures its loggers on import; quiet them after that

    for name in ("torch", "torchao", "transformers", "datasets", "executorch", "trl", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _setup_logging(debug: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    for old in list(log.handlers):  # main() may run more than once in a process (tests, notebooks)
        log.removeHandler(old)
    # Logs go to stderr: stdout is for results (`check --json`).
    log.addHandler(RichHandler(console=Console(stderr=True), show_path=False, show_time=True, markup=False))
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("train")
    g.add_argument("--model", dest="train.model", help="hub id or local folder (default: the embedded model)")
    g.add_argument("--dataset", dest="train.dataset", help="hub id or local .jsonl/.parquet/.txt (default: embedded)")
    g.add_argument("--text-column", dest="train.text_column")
    g.add_argument("--dataset-split", dest="train.dataset_split", help="split of a hub dataset (default: train)")
    g.add_argument("--mode", dest="train.mode", choices=MODES)
    g.add_argument("--lora-rank", dest="train.lora_rank", type=int, help="0 = full fine-tuning")
    g.add_argument("--lora-fake-quant", dest="train.lora_fake_quant", choices=LORA_FAKE_QUANT,
                   help="LoRA-QAT: fake-quantize the merged weight (default, what ships) or the base weight alone")
    g.add_argument("--distill-weight", dest="train.distill_weight", type=float,
                   help="add this × T² × KL(teacher ‖ student) to the loss (default 0: no distillation)")
    g.add_argument("--distill-temperature", dest="train.distill_temperature", type=float)
    g.add_argument("--distill-ce-weight", dest="train.distill_ce_weight", type=float,
                   help="when distilling, the SFT cross-entropy's weight (default 1; 0: the teacher's distributions alone)")
    g.add_argument("--teacher", dest="train.teacher",
                   help="distillation teacher: hub id or folder (default: the model itself; in a study, the bf16 fine-tune)")
    g.add_argument("--max-steps", dest="train.max_steps", type=int)
    g.add_argument("--batch-size", dest="train.batch_size", type=int)
    g.add_argument("--learning-rate", dest="train.learning_rate", type=float)
    g.add_argument("--lr-scheduler", dest="train.lr_scheduler", help="cosine (default), linear, constant_with_warmup, ...")
    g.add_argument("--gradient-accumulation-steps", dest="train.gradient_accumulation_steps", type=int)
    g.add_argument("--gradient-checkpointing", dest="train.gradient_checkpointing", action="store_const", const=True)
    g.add_argument("--packing", dest="train.packing", action="store_const", const=True, help="pack rows, padding-free")
    g.add_argument("--max-length", dest="train.max_length", type=int, help="training sequence length")
    g.add_argument("--save-steps", dest="train.save_steps", type=int, help="a resumable checkpoint every N steps")
    g.add_argument("--device", dest="train.device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--seed", dest="train.seed", type=int)
    g.add_argument("--fake-quant-kernels", dest="train.fake_quant_kernels", choices=FAKE_QUANT_KERNELS,
                   help="QAT fake quantization: fused kernels (auto: on CUDA) or torchao's eager quantizers")
    q = p.add_argument_group("quantization")
    q.add_argument("--scheme", dest="quant.scheme", help="8da4w (default), 8da8w or 4w")
    q.add_argument("--group-size", dest="quant.group_size", type=int, help="32/64/128/256, or 0 for per-channel")
    q.add_argument("--embedding-bits", dest="quant.embedding_bits", type=int, choices=[0, 4, 8],
                   help="the token embedding: 4 (default), 8, or 0 to leave it float")
    q.add_argument("--skip-indivisible", dest="quant.skip_indivisible", action="store_const", const=True)
    q.add_argument("--range-learning", dest="quant.range_learning", action="store_const", const=True,
                   help="QAT learns the weight scales (torchao's range learning); convert uses them "
                        "(default: on for LoRA-QAT, off for full fine-tuning)")
    q.add_argument("--no-range-learning", dest="quant.range_learning", action="store_const", const=False,
                   help="QAT takes each weight group's absmax as its scale at every step, with LoRA too")
    q.add_argument("--range-learning-rate", dest="train.range_learning_rate", type=float,
                   help="the learned scales' learning rate (default 1e-4 with LoRA, 1e-5 for full fine-tuning)")
    q.add_argument("--fake-quant-after-steps", dest="train.fake_quant_after_steps", type=int,
                   help="QAT: fine-tune this many steps without fake quantization first (default 0)")


def _int_list(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


def _add_resume_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted training from its last checkpoint")


def _add_export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-seq-len", dest="export.max_seq_len", type=int, help="KV cache length of the .pte")
    p.add_argument("--format", dest="export.formats", type=lambda v: [t for t in v.split(",") if t],
                   help="comma-separated programs for the bundle: pte (always), onnx (ONNX Runtime; docs/onnx.md)")
    p.add_argument("--onnx-accuracy-level", dest="export.onnx_accuracy_level", type=int,
                   help="MatMulNBits accuracy_level of the ONNX model (default 4: int8 activations; 1: float32)")
    p.add_argument("--lowering-workers", dest="export.lowering_workers", type=int,
                   help="processes for XNNPACK's preprocessing (default 0: one per core; 1: none forked)")


def _add_check_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-dataset", dest="check.eval_dataset", help="held-out text (default: embedded)")
    p.add_argument("--min-cosine", dest="check.thresholds.min_logits_cosine", type=float)
    p.add_argument("--min-top1", dest="check.thresholds.min_top1_agreement", type=float)
    p.add_argument("--max-ppl-increase", dest="check.thresholds.max_perplexity_increase", type=float)
    p.add_argument("--min-golden-agreement", dest="check.thresholds.min_golden_token_agreement", type=float)
    p.add_argument("--threads", dest="check.threads", type=int, help="ExecuTorch threads for the .pte's timing (default 4)")
    p.add_argument("--reference-device", dest="check.reference_device", choices=REFERENCE_DEVICES,
                   help="where the GPU references run (auto: cuda when present)")
    p.add_argument("--prompt", dest="check.prompts", action="append", help="a prompt to generate side by side (repeatable)")
    p.add_argument("--debug-layers", dest="check.layer_debug", action="store_const", const="always",
                   help="compare every layer of the .pte with eager even when the gates pass")
    p.add_argument("--device-profiles", dest="check.device_profiles", help="YAML of extra device profiles for the estimates")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeqat", description="QAT fine-tuning -> ExecuTorch .pte -> runtime check")
    parser.add_argument("--version", action="version", version=f"edgeqat {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    common.add_argument("--config", help="YAML config (see edgeqat/assets/default.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=[common], help="all stages; the embedded default with no arguments")
    p.add_argument("config_file", nargs="?", help="YAML config (same as --config)")
    p.add_argument("--output", dest="output_dir", help="output folder (default: edgeqat-out)")
    _add_train_options(p)
    _add_resume_option(p)
    _add_export_options(p)
    _add_check_options(p)

    p = sub.add_parser("study", parents=[common], help="bf16 vs PTQ vs QAT: train, quantize, evaluate, report")
    p.add_argument("config_file", nargs="?", help="YAML config (same as --config)")
    p.add_argument("--output", dest="output_dir", help="output folder (default: edgeqat-out)")
    _add_train_options(p)
    _add_resume_option(p)
    p.add_argument("--eval-dataset", dest="check.eval_dataset", help="held-out text (default: embedded)")
    p.add_argument("--arms", dest="study.arms", type=lambda v: [t for t in v.split(",") if t],
                   help=f"comma-separated QAT arms to compare with the baseline and PTQ: {', '.join(STUDY_ARMS)} "
                        "(default: qat)")
    p.add_argument("--seeds", dest="study.seeds", type=_int_list,
                   help="comma-separated seeds: the whole study once per seed, then mean and spread per arm")
    p.add_argument("--lm-eval-tasks", dest="study.lm_eval_tasks", type=lambda v: [t for t in v.split(",") if t],
                   help="comma-separated lm-eval tasks (needs lm-eval installed)")

    p = sub.add_parser("train", parents=[common], help="fine-tune (qat | bf16 | ptq) into a checkpoint folder")
    p.add_argument("--output", required=True, help="checkpoint folder to write")
    _add_train_options(p)
    _add_resume_option(p)

    p = sub.add_parser("convert", parents=[common], help="fake-quantized checkpoint -> real quantized weights")
    p.add_argument("checkpoint")
    p.add_argument("--output", required=True)

    p = sub.add_parser("export", parents=[common], help="converted checkpoint -> bundle (model.pte + tokenizer + manifest)")
    p.add_argument("converted")
    p.add_argument("--output", required=True)
    _add_export_options(p)

    p = sub.add_parser("check", parents=[common], help="run the bundle with ExecuTorch and compare with eager")
    p.add_argument("bundle")
    p.add_argument("--output", help="report folder (default: BUNDLE/../report)")
    p.add_argument("--reference", help="converted checkpoint to compare with (default: from the manifest)")
    p.add_argument("--unquantized", help="unquantized checkpoint (default: the converted model's source)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout")
    p.add_argument("--device-results", action="append", default=[], metavar="FILE",
                   help="benchmark results written by the demo apps (docs/device_results.md); repeatable")
    _add_check_options(p)
    return parser


OPTION_KEYS = ("train.", "quant.", "export.", "check.", "study.")


def _overrides(args: argparse.Namespace) -> dict:
    found = {k: v for k, v in vars(args).items() if k.startswith(OPTION_KEYS) and v is not None}
    if getattr(args, "output_dir", None):
        found["output_dir"] = args.output_dir
    return found


def _dispatch(args: argparse.Namespace) -> int:
    from edgeqat.config import load_config

    config = load_config(getattr(args, "config_file", None) or args.config, _overrides(args))
    if args.command == "run":
        from edgeqat.pipeline import run
        from edgeqat.runtime_check.report import print_table

        try:
            report = run(config, resume=args.resume)
        finally:
            report_file = Path(config.output_dir) / "report" / "report.json"
            if report_file.is_file():
                print_table(json.loads(report_file.read_text()))
        log.info("bundle: %s  report: %s", Path(config.output_dir) / "bundle", Path(config.output_dir) / "report" / "report.md")
        return 0 if report["passed"] else 3
    if args.command == "study":
        from edgeqat.train.study import study
        from edgeqat.train.study_report import STUDY_MD
        from edgeqat.train.study_seeds import study_seeds

        report = (study_seeds if config.study.seeds else study)(config, resume=args.resume)
        if report:  # rank 0 under torchrun
            print((Path(config.output_dir) / "study" / STUDY_MD).read_text())
        return 0
    if args.command == "train":
        from edgeqat.train.finetune import train

        train(config, args.output, resume=args.resume)
    elif args.command == "convert":
        from edgeqat.train.convert import convert

        convert(args.checkpoint, args.output)
    elif args.command == "export":
        from edgeqat.export.bundle import export_bundle

        export_bundle(args.converted, args.output, config.export)
    elif args.command == "check":
        from edgeqat.runtime_check.check import check, raise_on_failure
        from edgeqat.runtime_check.report import print_table

        output = args.output or str(Path(args.bundle).resolve().parent / "report")
        report = check(args.bundle, output, config.check, args.reference, args.unquantized, args.device_results)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_table(report)
        raise_on_failure(report)
    return 0


def _raise_terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the cleanup short
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated in the main thread while the command runs (and is restored after: tests and
    notebooks call main() more than once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# An OSError on a path the user gave (a read-only folder, a full disk, a name too long) is their
# environment, not a bug: one line naming the path.
ENVIRONMENT_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.debug)
    _setup_logging(args.debug)
    try:
        with _sigterm_as_interrupt():
            return _dispatch(args)
    except EdgeqatError as e:
        print(f"edgeqat: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated:
        print("edgeqat: terminated (SIGTERM); finished artifacts are kept, the interrupted one was not written",
              file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        print("edgeqat: interrupted; finished artifacts are kept, the interrupted one was not written", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure: one line, the traceback behind --debug
        if args.debug:
            raise
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS and e.filename is not None:
            print(f"edgeqat: error: {e.filename}: {e.strerror}", file=sys.stderr)
            return EdgeqatError.exit_code
        print(f"edgeqat: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
