"""One configuration record for the accelerator: every knob, its derived values and its checks.

Presets are `dataclasses.replace` copies of the default. The arithmetic widths are the
contract's (`systolic.sw.arith`) and are not configurable: the golden model defines them.
"""

import dataclasses
from dataclasses import dataclass

from ..sw import arith
from ..sw.errors import SystolicError

__all__ = ["PRESETS", "TARGETS", "AcceleratorConfig", "ConfigError", "preset", "preset_help"]

TARGETS = ("generic", "ecp5", "ice40")


class ConfigError(SystolicError, ValueError):
    """An accelerator configuration that cannot be built; the message says what to change."""


#: Knobs added after the first release, and what a configuration saved before them had.
_BEFORE_KNOBS = {"dense_conv": False, "fused_pool": False, "fetch_ahead": False,
                 "fc_rows": 0, "deep_pipeline": False, "dense_raster": False}


def _pow2(n):
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class AcceleratorConfig:
    """Parameters of one accelerator instance.

    The array is output-stationary: ``rows`` output pixels by ``cols`` output channels.
    Activations are stored as words of ``cols`` int8 channels (one pixel, one channel tile).

    Parameters
    ----------
    rows, cols : int
        Systolic array size; ``rows * cols`` processing elements, one DSP multiplier each.
    act_depth : int
        Activation memory depth in words of ``cols`` int8 lanes (power of two).
    weight_depth : int
        Weight memory depth in words of ``cols`` int8 weights (power of two).
    param_depth : int
        Requantization parameter memory depth in channel tiles (power of two).
    program_depth : int
        Layer descriptors the controller's program memory holds (power of two, at most 256).
    max_kernel : int
        Largest kernel (height or width) the convolution engine's counters can hold. Fully
        connected layers run as a 1x1 convolution of one pixel holding their whole input
        (`systolic.hw.isa.describe_linear`), so this does not limit them.
    max_dim : int
        Largest feature map height or width.
    pool : bool
        Whether the pooling engine is present (the convolution engine always is: it also runs
        the fully connected layers).
    pool_avg : bool
        Whether the pooling engine can average (it can always take the maximum). Averaging
        needs wider line buffers and a constant multiplier per lane.
    eltwise : bool
        Whether the core has the element-wise engines (`systolic.hw.eltwise`): the residual
        add and global average pooling, which ResNet-class networks need. They take no part in
        a LeNet; without them (the iCEBreaker's ``small``) the compiler refuses a network with
        a residual add or global average pooling, naming the layer.
    requant_lanes : int
        Requantization lanes, a divisor of ``cols``; 0 means one per column. With fewer lanes
        than columns each row of sums goes through the lanes in ``cols / requant_lanes``
        cycles, and the parameter memory holds ``requant_lanes`` lanes per word. A tile's
        sums must then be drained before the next tile replaces them: a convolution's
        reduction (``kh * kw * ceil(cin / cols) * cols`` steps) must be at least
        ``rows * cols / requant_lanes`` and ``cols + (rows - 1) * (cols / requant_lanes - 1)``
        steps, which always holds with one row or one lane per column (the compiler checks it).
    requant_dsp : bool
        Multiply by ``M`` on DSP blocks (two 16 x 16 multipliers per lane) instead of a
        shift-and-add tree in the fabric. The residual add's multipliers (int8 x ``M``, one a
        column) then go into the fabric on the ECP5 (`systolic.hw.dsp.ScaleMultiplier`): the
        DSP blocks are the array's and the requantizer's (the ``wide`` preset with
        ``requant_dsp`` takes 144 of the ECP5-85F's 156, not 160).
    dense_conv : bool
        Whether the convolution engine can run a one-channel convolution *dense*
        (`systolic.hw.isa.describe_dense_conv`): whole kernel rows packed into each reduction
        step, each lane reading its own pixel from its own column slice of the activation
        memory, instead of one tap a step in lane 0. A network's first layer on a grayscale
        image takes about ``kw * (cols // kw)`` times fewer steps. Needs the memory in column
        slices, which the iCE40 build does not have.
    fused_pool : bool
        Whether the convolution engine can max-pool its output 2x2 with stride 2 on the way
        to memory (a convolution descriptor's ``pool``): a line buffer of ``max_dim / 2``
        words and a comparator per lane, and a network's ``conv -> maxpool 2x2 /2`` takes no
        pass of the pooling engine.
    fetch_ahead : bool
        The controller's fast path: the core keeps its own copy of a layer's descriptor, so
        that RUN fetches the next one from the program memory while a layer runs (a
        descriptor takes a cycle a byte), and the controller's block RAM reads go through
        registers. Without it (the iCEBreaker's `small`, short of logic cells) the engines read
        the controller's descriptor, which it then fetches between layers.
    deep_pipeline : bool
        Stages for clocks above 90 MHz on the ECP5 (the `lenet` preset has them; it closes at
        105 MHz on the ULX3S): each pooling window's combined output in a register before the
        next unit, the mean in three one-adder stages instead of two (three more cycles a
        pooling layer, `systolic.hw.pool.pool_stages`), the residual add's clamp a stage after
        its rounding (a cycle more an add, `systolic.hw.eltwise.add_latency`), and the ULX3S's
        LEDs from registers. Without averaging (``pool_avg`` off) the pooling engine's windows
        become the averaging engine's without its arithmetic: block RAM inputs from registers,
        output registered (up to six more cycles a pooling layer). In the convolution engine,
        the fill's read addresses go through two registers to the activation memory's column
        slices instead of one (arrays of 8 columns or more; a cycle more a convolution,
        `systolic.hw.conv.fill_stages`), the weight address through a register before the
        weight memory's (a cycle more, `systolic.hw.conv.weight_addr_stages`), a fused
        pooling's comparators each before a register of their own (two cycles more a fused
        layer, `systolic.hw.conv.fused_pool_stages`), a dense lane's row offset through a
        register before the add of its column (a cycle more of a dense convolution's
        preparation, `systolic.hw.conv.dense_prep_cycles`), the lanes' taps from tables, each
        lane's from a copy of the descriptor's key of its own, the block's last row
        (``r == R - 2``) a register, and the pixel walker keeps whether it is still in the map
        in a register of its own. In the array, each PE's restart flags are its own
        flip-flops (`systolic.hw.pe.ProcessingElement`'s ``own_flags``) and its carry
        between the accumulator's halves goes through two registers (a cycle more a
        convolution, `systolic.hw.pe.carry_stages`). The read-back's word goes into a register
        of its own before the controller, and the controller packs an activation word of
        fewer lanes on its way from its shift register to the core, not as its last byte
        comes in (neither is a layer's cycles).
    dense_raster : bool
        Whether the convolution engine can walk a dense convolution's taps in raster order
        (`systolic.hw.isa.dense_walk`), each lane wrapping to the next kernel row on its own,
        where its words hold taps of one kernel row that do not divide the kernel's width: a
        5x5 kernel of 6 channels on 16 lanes, two taps a word, in 13 words instead of 5 rows
        of 3 (lenet5's second convolution: 1,752 cycles instead of 2,008). Four registers
        and three adds a lane; needs ``dense_conv`` and three rows or more. The `lenet`
        preset has it (without the pooling engine: 105 MHz on the ULX3S).
    fc_rows : int
        Rows of the array a fully connected layer of one image can run *row by row* on
        (`systolic.hw.isa.describe_fc_rows`), 0 for none: each of those rows computes its own
        channel tile of the image's outputs, from its own weight words, ``fc_rows * cols``
        weights a cycle instead of ``cols``. The weight memory is then built as ``fc_rows``
        banks of ``weight_depth / fc_rows`` words, bank ``r`` feeding row ``r``. A fully
        connected layer of one image uses one row of the array otherwise: its weights, each
        used once, are what bounds it. A power of two, at most ``rows``; needs at least 8 even
        columns and the memories in column slices (not the iCE40's).
    target : str
        Multiplier implementation: ``generic`` (inferred, for simulation), ``ecp5``
        (MULT18X18D with registered inputs and outputs) or ``ice40`` (SB_MAC16).
    """

    rows: int = 8
    cols: int = 8
    act_depth: int = 8192
    weight_depth: int = 16384
    param_depth: int = 64
    program_depth: int = 64
    max_kernel: int = 7
    max_dim: int = 255
    pool: bool = True
    pool_avg: bool = True
    eltwise: bool = True
    requant_lanes: int = 0
    requant_dsp: bool = False
    dense_conv: bool = True
    fused_pool: bool = True
    fetch_ahead: bool = True
    fc_rows: int = 0
    deep_pipeline: bool = False
    dense_raster: bool = False
    target: str = "generic"

    # The arithmetic contract, exposed here so the hardware reads one object.
    data_bits = arith.DATA_BITS
    acc_bits = arith.ACC_BITS
    m_bits = arith.M_BITS
    shift_bits = arith.SHIFT_BITS

    def __post_init__(self):
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= 32:
                raise ConfigError(f"Array {name} must be an integer between 1 and 32, not {v!r}")
        if self.rows > self.cols:
            raise ConfigError(
                f"Array rows must not exceed cols ({self.rows} > {self.cols}): the activation "
                "transposer reads one pixel word per cycle and feeds cols cycles per block; "
                "swap the dimensions")
        for name in ("act_depth", "weight_depth", "param_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or not _pow2(v) or not 16 <= v <= (1 << 20):
                raise ConfigError(
                    f"{name} must be a power of two between 16 and 2**20, not {v!r}")
        if not _pow2(self.program_depth) or not 2 <= self.program_depth <= 256:
            raise ConfigError(f"program_depth must be a power of two between 2 and 256, "
                              f"not {self.program_depth!r}")
        if not 1 <= self.max_kernel <= 15:
            raise ConfigError(f"max_kernel must be between 1 and 15, not {self.max_kernel!r}")
        if not 8 <= self.max_dim <= 4095:
            raise ConfigError(f"max_dim must be between 8 and 4095, not {self.max_dim!r}")
        lanes = self.requant_lanes
        if not isinstance(lanes, int) or lanes < 0 or (lanes and self.cols % lanes):
            raise ConfigError(
                f"requant_lanes must be 0 (one per column) or a divisor of cols {self.cols}, "
                f"not {lanes!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.dense_conv and self.target == "ice40":
            raise ConfigError("dense_conv needs the activation memory in column slices, which "
                              "the ice40 target does not build; set dense_conv=False")
        for name in ("pool", "pool_avg", "eltwise", "deep_pipeline", "dense_raster"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, not {getattr(self, name)!r}")
        if self.dense_raster and not (self.dense_conv and self.rows >= 3):
            raise ConfigError(f"dense_raster needs dense_conv and three rows or more (a lane's "
                              f"next step is worked out in the two cycles after its last), not "
                              f"dense_conv={self.dense_conv} and rows {self.rows}; set "
                              "dense_raster=False")
        fc = self.fc_rows
        if fc:
            wrong = [what for bad, what in (
                (not (isinstance(fc, int) and _pow2(fc) and 2 <= fc <= self.rows),
                 f"a power of two from 2 to rows {self.rows}, not {fc!r}"),
                (self.cols < 8 or self.cols % 2, f"at least 8 even columns, not {self.cols}"),
                (self.weight_depth < 16 * fc,
                 f"a weight memory of 16 words a bank or more, not {self.weight_depth}"),
                (self.target == "ice40", "the memories in column slices, not the ice40 "
                                         "target's")) if bad]
            if wrong:
                raise ConfigError(f"fc_rows (weight banks, rows a fully connected layer of "
                                  f"one image runs on) must be 0 or take {'; '.join(wrong)}; "
                                  "set fc_rows=0")

    # Derived values ---------------------------------------------------------------------------

    @property
    def pes(self):
        """Processing elements, and DSP multipliers, in the array."""
        return self.rows * self.cols

    @property
    def rq_lanes(self):
        """Requantization lanes (``requant_lanes``, or ``cols`` when that is 0)."""
        return self.requant_lanes or self.cols

    @property
    def rq_groups(self):
        """Cycles a row of sums spends in the requantizer; parameter words per channel tile."""
        return self.cols // self.rq_lanes

    @property
    def dsps(self):
        """DSP blocks the accelerator uses: one per PE; two per requantization lane if
        ``requant_dsp``; with the element-wise engines (`eltwise`), one per column for the
        residual add, except on the ECP5 with ``requant_dsp``, where it multiplies in the
        fabric (`systolic.hw.dsp.ScaleMultiplier`)."""
        add = self.cols if self.eltwise and not (self.requant_dsp and self.target == "ecp5") \
            else 0
        return self.pes + (2 * self.rq_lanes if self.requant_dsp else 0) + add

    @property
    def word_bits(self):
        """Width of an activation or weight word: ``cols`` int8 lanes."""
        return self.cols * self.data_bits

    @property
    def param_bits(self):
        """Width of a parameter word: per requantization lane a bias, a multiplier, a shift."""
        return self.rq_lanes * (self.acc_bits + self.m_bits + self.shift_bits)

    @property
    def param_words(self):
        """Parameter memory depth in words: ``rq_groups`` words per channel tile."""
        return self.param_depth * self.rq_groups

    @property
    def act_addr_bits(self):
        return (self.act_depth - 1).bit_length()

    @property
    def weight_addr_bits(self):
        return (self.weight_depth - 1).bit_length()

    @property
    def param_addr_bits(self):
        return (self.param_words - 1).bit_length()

    @property
    def dim_bits(self):
        return self.max_dim.bit_length()

    @property
    def kernel_bits(self):
        return self.max_kernel.bit_length()

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d):
        """The configuration `as_dict` gave (its derived values are ignored; a knob it lacks,
        from an older version, takes that version's value)."""
        d = {**_BEFORE_KNOBS, **d}
        if "eltwise" not in d:
            # Before it was a knob, the element-wise engines came with the averaging pooling
            # engine.
            d["eltwise"] = d.get("pool", True) and d.get("pool_avg", True)
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def as_dict(self):
        d = dataclasses.asdict(self)
        d.update(pes=self.pes, dsps=self.dsps, rq_lanes=self.rq_lanes,
                 word_bits=self.word_bits, data_bits=self.data_bits, acc_bits=self.acc_bits,
                 m_bits=self.m_bits, shift_bits=self.shift_bits)
        return d


PRESETS = {
    # ECP5-85F (ULX3S): 64 of its 156 MULT18X18D; memories for ResNet-8-class networks (MLPerf
    # Tiny's ResNet-8 peaks at 7,168 activation words and needs 9,808 weight words here, 9,760
    # with dense convolutions), in
    # 32 + 64 of its 208 DP16KD.
    "default": AcceleratorConfig(),
    # iCE40UP5K (iCEBreaker), 5280 logic cells: 4 of its 8 SB_MAC16 in the array, 2 more in the
    # one requantization lane; weights in SPRAM, everything else in its 30 EBR.
    "small": AcceleratorConfig(rows=1, cols=4, act_depth=1024, weight_depth=16384,
                               param_depth=64, program_depth=32, max_dim=31, pool_avg=False,
                               eltwise=False, requant_lanes=1, requant_dsp=True,
                               dense_conv=False, fused_pool=False, fetch_ahead=False),
    # ECP5-85F (ULX3S's build): 8 rows by 16 columns, 128 of its 156 MULT18X18D in the array
    # and 16 in the residual add; 8 requantization lanes (a row of sums drains in two cycles;
    # 16 would double the requantizer's logic). Words of 16
    # channels tile the LeNets' 16 and 32 channels whole, and its fully connected layers
    # take 16 weights a cycle, so every network runs faster than on the 8x8 at 90 MHz even
    # at 75 (`bench/throughput.py`). Activations as the default's (8,192 words, now of 16
    # channels); 8,192 weight words of 16 (131k weights: ResNet-8 needs 78k) in 64 + 64 +
    # the parameters' of its 208 DP16KD.
    # Fully connected layers of one image row by row (`fc_rows` 4: 4 weight banks of 2,048
    # words, as many block RAMs, each a lane of a bank; lenet5 4,596 cycles an image instead
    # of 6,426, exact in RTL) did not route on the ULX3S at 90 MHz (nor 8 banks of 1,024,
    # nor 2 of 4,096): off here until they do.
    "wide": AcceleratorConfig(rows=8, cols=16, act_depth=8192, weight_depth=8192,
                              param_depth=64, requant_lanes=8),
    # ECP5-85F, all of it: 144 of its 156 multipliers in the array, the other 12 in the 6
    # requantization lanes (a row of sums drains in two cycles, overlapped with the next
    # tile's reduction; with 12 lanes the requantizer alone took 12,362 LUTs and the design
    # did not route).
    "big": AcceleratorConfig(rows=12, cols=12, act_depth=8192, weight_depth=16384,
                             param_depth=128, requant_lanes=6),
}
# ECP5-85F for LeNet-class networks: `wide` without what they do not use (averaging, the
# residual add and global average pooling: 30 % of its LUTs; the pooling engine: their
# poolings all fuse into the convolutions), with the stages of `deep_pipeline`, for a faster
# clock on the ULX3S, and the raster walk of `dense_raster` (lenet5's second convolution in
# 13 words, not 15): it closes at 105 MHz there (106.86 MHz on seed 16, the board's default
# for it: `Board.preset_builds`), README: the `lenet` preset.
PRESETS["lenet"] = PRESETS["wide"].replace(pool=False, pool_avg=False, eltwise=False,
                                           deep_pipeline=True, dense_raster=True)


def preset_help():
    """The presets for a ``--help``: ``"default (8x8), small (1x4), big (12x12)"``."""
    return ", ".join(f"{name} ({c.rows}x{c.cols})" for name, c in PRESETS.items())


def preset(name):
    """Return the preset called ``name``; an unknown name lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
