"""``systolic demo``: the whole flow on the built-in digits, from training to RTL, in minutes.

Trains lenet-digits with the training defaults, quantizes it, compiles it for an accelerator
preset, writes the core's Verilog, runs test images through the RTL and compares float, int8
golden and RTL results.
"""

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np

from .errors import SystolicError

__all__ = ["DEMO_BOARD", "add_parser", "run_demo"]

#: The board whose configuration the demo runs (unless ``--preset``) and whose link and array
#: its report weighs.
DEMO_BOARD = "ulx3s-85f"


#: What the demo writes into its directory, in the order its last line names them.
FILES = {
    "model.pt": "the float model",
    "model.qnet": "the int8 network",
    "systolic.v": "the accelerator's Verilog",
    "manifest.json": "its configuration",
    "report.txt": None,
    "report.json": None,
    "report.html": "plots; open it in a browser",
}

#: The C++ optimization of the demo's fast simulator: its 40 images are a fraction of a second
#: at any level, and the build waits on the compiler (measured in the session note of Dec 2:
#: the demo from a cold cache, -O0 against -O2).
DEMO_CXX_OPT = "-O0"


def run_demo(out_dir, *, preset_name=None, images=40, sim="fast", epochs=None,
             seed=0, log=print, verbose=False):
    """Run the demo, writing `FILES` into ``out_dir``; returns the report as a dict.

    ``log`` gets the steps and the summary; the simulator's own output goes to a log file
    (`systolic.sw.simulate.simulator_log`) unless ``verbose``.

    Raises
    ------
    SystolicError
        When ``images`` is not positive or the output directory cannot be created.
    """
    from ..hw.boards import BOARDS, get_board
    from ..hw.config import preset
    from ..hw.generate import generate
    from . import data, golden, models, quantize, simulate, train
    from .compiler import compile_network
    from .report import write_report

    if images < 1:
        raise SystolicError(f"--images must be at least 1, not {images}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SystolicError(f"{out}: output must be a directory, not a file")
    out.mkdir(parents=True, exist_ok=True)
    # The ULX3S's configuration by default, so that the report says what that board allows.
    preset_name = preset_name or get_board(DEMO_BOARD).preset
    cfg = preset(preset_name)
    start = time.monotonic()
    train.set_threads()

    split = data.load_digits()
    hp = dict(train.DEFAULTS["digits"], **({} if epochs is None else {"epochs": epochs}))
    # The fast simulator depends on the configuration alone: Verilator builds it (the first
    # time; it is cached) in another process while steps 1 to 3 run here.
    prebuild = (simulate.building(cfg, cxx_opt=DEMO_CXX_OPT) if sim == "fast"
                else contextlib.nullcontext())
    with prebuild as builder:
        log(f"[1/5] training lenet-digits on digits ({len(split.train)} images, "
            f"{hp['epochs']} epochs)" + (", building the simulator meanwhile" if sim == "fast"
                                          else ""))
        model = models.build_model("lenet-digits", seed=seed)
        train.train(model, split, seed=seed, log=lambda line: None, **hp)
        train.save_checkpoint(out / "model.pt", model, arch="lenet-digits",
                              input_shape=(1, 8, 8), dataset="digits", p_max=split.train.p_max)

        log("[2/5] quantizing to int8 (256 calibration images)")
        qnet = quantize.quantize(model, split.train.x[:256], input_shape=(1, 8, 8),
                                 p_max=split.train.p_max, dataset="digits", arch="lenet-digits")
        qnet.save(out / "model.qnet")
        full = golden.evaluate(qnet, split.test, model)

        log(f"[3/5] compiling for the {preset_name} preset ({cfg.rows}x{cfg.cols} array)")
        program = compile_network(qnet, cfg)
        generate(cfg, out)
        if builder is not None and builder.is_alive():
            log("      waiting for the simulator's build (once per design, about a minute)")

    n = min(images, len(split.test))
    log(f"[4/5] simulating {n} test images on {sim}"
        + ("" if sim == "fast" else " (the first run builds the simulator, about a minute)"))
    # Batches of the largest size the memories hold (the simulation's processes sharing the
    # images): what the accelerator runs fastest.
    batch = simulate.resolve_batch("auto", qnet, cfg, n) if sim == "fast" else 1
    with simulate.simulator_log(verbose) as say:
        # print() would go to the simulator's log now: the terminal's lines go through say.
        report = simulate.simulate(
            qnet, split.test.q[:n], cfg, labels=split.test.labels[:n], sim=sim, batch=batch,
            cxx_opt=DEMO_CXX_OPT if sim == "fast" else None,
            progress=simulate.progress_bar(n, log=say if log is print else log))
    float_pred = train.logits(model, split.test.x[:n]).argmax(dim=1).numpy()
    float_acc = float(np.mean(float_pred == split.test.labels[:n]))

    log("[5/5] writing reports")
    result = report.as_dict()
    result.update(float_accuracy=float_acc, test_split=full, preset=preset_name,
                  weight_words=len(program.weights), param_words=len(program.params),
                  act_words=program.act_words, total_seconds=time.monotonic() - start)
    text = (simulate.format_report(report, float_accuracy=float_acc)
            + f"\n\nwhole test split ({full['images']} images, golden model): float accuracy "
              f"{full['float_accuracy']:.2%}, int8 accuracy {full['int8_accuracy']:.2%}")
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.txt").write_text(text + "\n")
    board = next((b for b in BOARDS.values() if b.preset == preset_name), None)
    write_report(out / "report.html", simulation=result, qnet=qnet, cfg=cfg,
                 images=split.test.q[:n], float_images=split.test.x[:n],
                 float_accuracy=float_acc, board=board and board.name,
                 title=f"systolic demo: lenet-digits on the {preset_name} preset")
    log(text)
    names = ", ".join(name + (f" ({what})" if what else "") for name, what in FILES.items())
    log(f"\nwrote {names} into {out} in {time.monotonic() - start:.0f} s")
    if report.mismatches:
        raise SystolicError(f"{report.mismatches} of {n} images differ from the golden model; "
                            f"see {out / 'report.txt'}")
    return result


def _run(args):
    run_demo(args.output, preset_name=args.preset, images=args.images, sim=args.sim,
             epochs=args.epochs, verbose=args.verbose)


def add_parser(subparsers):
    """Register ``systolic demo``."""
    from ..hw.config import preset_help
    from .simulate import SIMULATORS

    p = subparsers.add_parser(
        "demo", help="train, quantize, compile and simulate lenet-digits end to end",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The whole flow on the built-in 8x8 digits: train lenet-digits, quantize "
                    "it to int8, compile it for an accelerator preset, write the core's "
                    "Verilog, run test images through the RTL and compare float, int8 golden "
                    "and RTL accuracy, with cycles and PE utilization per layer. Writes "
                    "report.html beside the model and Verilog: the network, cycles against the "
                    "performance model, float against int8 per layer, the confusion matrix and "
                    "what the matching board allows (see 'systolic report'). Takes a minute "
                    "or two; the simulator's own output goes to a log file (-v shows it).",
        epilog="examples:\n"
               "  systolic demo\n"
               "  systolic demo -o /tmp/demo --images 100 --sim icarus")
    p.add_argument("-o", "--output", default="systolic-demo", metavar="DIR",
                   help="directory for the Verilog, model and reports (default: "
                        "./systolic-demo)")
    p.add_argument("--preset", metavar="P",
                   help=f"accelerator preset: {preset_help()} (default: the {DEMO_BOARD}'s, "
                        "so that the report says what that board allows)")
    p.add_argument("--images", type=int, default=40, metavar="N",
                   help="test images to simulate (default: 40)")
    p.add_argument("--sim", choices=SIMULATORS, default="fast",
                   help="simulator: " + "; ".join(f"{k}: {v}" for k, v in SIMULATORS.items()))
    p.add_argument("--epochs", type=int, help="training epochs (default: the train defaults)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the simulator's own output (cocotb's log); by default it goes to "
                        "a log file in the build directory, named when something fails")
    p.set_defaults(func=_run)
