"""The fast harness (`systolic.sim.fast`): whole networks on Verilator clocked from C++, the host
driver a frame at a time. Same driver, same protocol, same golden comparison as the cocotb
route (``tests/test_network_rtl.py``), so this is where the suite runs networks at scale:
lenet-digits on the default preset, lenet5 on the 12x12 one, waveforms, and the harness's own
failure paths. (The virtual board's UART with faults on the wire: ``tests/test_deploy.py``,
``tests/test_fuzz.py``.)"""

import asyncio

import numpy as np
import pytest
from net_common import random_images, random_qnet
from systolic.hw.config import preset
from systolic.sim.fast import BYTE, Harness, HarnessLink, build_harness, network_top
from systolic.sw import golden, perfmodel, protocol
from systolic.sw.compiler import compile_network
from systolic.sw.errors import SystolicError
from systolic.sw.simulate import parse_window, simulate

pytestmark = pytest.mark.slow


def _exact(report, qnet, images):
    np.testing.assert_array_equal(report.logits, golden.run(qnet, images).logits)
    assert report.mismatches == 0
    # Each run's total (the controller's cycles between the layers included): the model's
    # for its batch size (with tracing, each layer's run's, summed).
    if not report.traced:
        for run, b in zip(report.run_cycles, report.batches, strict=True):
            assert run == perfmodel.predict_program(report.program.with_batch(int(b)))
    assert report.run_exact, report.run_cycles.tolist()
    if report.layer_cycles.shape[1] == len(report.program.layers):
        assert report.model_exact, report.layer_cycles[0].tolist()
    else:
        assert np.array_equal(report.layer_cycles[:, 0], report.run_cycles)     # (DONE's)


def test_lenet_digits_fast_two_processes():
    """Every logit of 24 images exact, shared between two simulator processes, and every layer
    of every image taking exactly the cycles the performance model predicts."""
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 24, seed=7)
    report = simulate(qnet, images, preset("default"), jobs=2)
    _exact(report, qnet, images)
    d = report.as_dict()
    assert (d["sim"], d["jobs"], d["images"]) == ("fast", 2, 24)
    assert d["sim_cycles"] >= 24 * d["cycles_per_image"]


def test_lenet_digits_fast_trace_and_waves(tmp_path):
    """The iCEBreaker's configuration (a 1x4 array, one requantization lane on DSP blocks, a
    max-only pooling engine): every layer's output of every image read back and exact, cycles
    as predicted; image 1's waveforms as FST."""
    qnet = random_qnet("lenet-digits", seed=4)
    images = random_images(qnet, 3, seed=3)
    fst = tmp_path / "w.fst"
    report = simulate(qnet, images, preset("small"), trace=True, waves=(1, 2),
                      waves_file=fst)
    _exact(report, qnet, images)
    assert report.first_difference is None
    assert report.speed["waves"] == str(fst)
    head = fst.read_bytes()[:1]
    assert head == b"\x00"                  # an FST file begins with its header block (type 0)
    assert fst.stat().st_size > 1000


def test_lenet5_big_preset_fast():
    """lenet5 (28x28 MNIST-shaped input) on the 12x12 preset, in batches of three: exact,
    cycles as predicted. (Dense input is covered on the default preset: here its frames are 26
    times longer and would take most of the test's time.)"""
    qnet = random_qnet("lenet5")
    images = random_images(qnet, 6, seed=5)
    report = simulate(qnet, images, preset("big"), batch=3)
    _exact(report, qnet, images)
    assert report.batches.tolist() == [3] * 6


@pytest.mark.parametrize("base", ["wide", "lenet"])
def test_lenet5_wide_row_pairs(base):
    """lenet5 on the ULX3S's 8x16 preset (and on `lenet`, with `deep_pipeline`'s stages and
    ``dense_raster``, its second convolution in raster order): its
    first convolution in vertical pairs (`systolic.hw.isa.pair_rows`), read by a dense
    convolution whose weights follow its channel layout; with ``fc_rows`` 4, its fully
    connected layers of 8 and 6 channel tiles row by row, 4 tiles a run
    (`systolic.hw.isa.describe_fc_rows`), one image at a time. Exact, cycles as predicted, one
    image at a time, in a batch, and traced (each layer's output decoded and compared)."""
    qnet = random_qnet("lenet5")
    images = random_images(qnet, 5, seed=6)
    cfg = preset(base).replace(fc_rows=4, dense_raster=base == "lenet")
    one, three = compile_network(qnet, cfg), compile_network(qnet, cfg, batch=3)
    assert one.layers[0].fields["vpairs"] == 1
    # The second convolution's 25 taps of six channels, two a word: on `lenet` with
    # ``dense_raster`` in raster order, 13 words (`systolic.hw.isa.dense_walk`), else 5 rows
    # of 3.
    second = one.layers[1].fields
    assert (second["kh"], second["kw"], second["cin_words"]) == (
        (1, 1, 13) if base == "lenet" else (5, 3, 1))
    assert [len(lay.entries) for lay in one.layers[2:]] == [2, 2, 1]
    assert [lay.fields.get("fc_rows") for lay in one.layers[2:]] == [1, 1, None]
    assert not any(lay.fields.get("fc_rows") for lay in three.layers)
    for batch in (1, 3):
        _exact(simulate(qnet, images, cfg, batch=batch), qnet, images)
    for batch in (1, 2):
        traced = simulate(qnet, images[:batch], cfg, batch=batch, trace=True, jobs=1)
        _exact(traced, qnet, images[:batch])
        assert traced.first_difference is None


def _small_net(layers, shape, images, seed):
    """A quantized `torch.nn.Sequential` of ``layers`` on inputs of ``shape`` (seeded weights
    and calibration), and ``images`` random images."""
    import torch
    from systolic.sw import quantize

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    calib = rng.random((32, *shape)).astype(np.float32)
    qnet = quantize.quantize(torch.nn.Sequential(*layers), calib, input_shape=shape,
                             p_max=255, dataset="mnist", arch="custom")
    return qnet, rng.integers(0, 128, (images, *shape)).astype(np.int8)


def _odd_map_net():
    """A network on an 11x9 map (3x3 with padding 1, 2x2 pooling, a 3x3 convolution: maps of
    5x9 pairs and 3x2 pixels, whose images end inside a pixel tile) and four images."""
    from torch import nn
    return _small_net([nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Conv2d(6, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 2, 10)],
                      (1, 11, 9), 4, seed=1)


def _column_net():
    """1x1 convolutions on a 4x1 map, then two fully connected layers, the second of one
    input word (a block a tile on a one-pixel map); eight images."""
    from torch import nn
    return _small_net([nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Conv2d(8, 12, 1), nn.ReLU(),
                       nn.Flatten(), nn.Linear(12 * 4, 16), nn.ReLU(), nn.Linear(16, 10)],
                      (1, 4, 1), 8, seed=3)


def test_lenet_preset():
    """The ULX3S's `lenet` preset (the 8x16 of ``wide`` with ``--no-pool --no-pool-avg
    --no-eltwise --deep-pipeline --dense-raster``: PEs with two carry registers,
    `carry_stages`; lenet5's second convolution walked in raster order), whose walker keeps
    whether it is still in the map in a register of its own (`w_more`):
    lenet-digits one image and three at a time (the fully connected layer's one-pixel map,
    three images' pixels in one tile), lenet5 two at a time (three fully connected layers),
    and the odd map's network two and three at a time (maps of 45 and 6 pixels, images
    ending inside a pixel tile). Exact, cycles as predicted."""
    cfg = preset("lenet")
    assert cfg == preset("wide").replace(pool=False, pool_avg=False, eltwise=False,
                                         deep_pipeline=True, dense_raster=True)
    for arch, batches in (("lenet-digits", (1, 3)), ("lenet5", (2,))):
        qnet = random_qnet(arch, seed=4)
        images = random_images(qnet, 6, seed=7)
        for batch in batches:
            _exact(simulate(qnet, images, cfg, batch=batch), qnet, images)
    qnet, images = _odd_map_net()
    for batch in (2, 3):
        _exact(simulate(qnet, images, cfg, batch=batch), qnet, images)
    # Maps one pixel wide (each step of the walker a new row) of 1x1 convolutions (a block a
    # tile): the walker reaches an image's end on a row step, in the tile's only block, and in
    # batches of two and four, the last image's at a tile's last row; and a fully connected
    # layer of one input word, its one-pixel map's only tile a block.
    qnet, images = _column_net()
    for batch in (1, 2, 3, 4):
        _exact(simulate(qnet, images, cfg, batch=batch), qnet, images)


def test_row_pairs_padded_odd_map():
    """Vertical pairs with padding and an odd map (11x9, 3x3 with padding 1): the walk's rows of
    pairs step two input rows, the last pair's window reaches the padding below the map (its
    lanes stored as 0), the odd height's last row and the odd width's last column are dropped
    by the pooling; six channels, read by a dense 6->8 convolution. Exact, in a batch."""
    qnet, images = _odd_map_net()
    cfg = preset("wide")
    f = compile_network(qnet, cfg).layers[0].fields
    assert (f["vpairs"], f["pad"], f["out_h"], f["out_w"]) == (1, 1, 5, 9)
    _exact(simulate(qnet, images, cfg, batch=2, jobs=1), qnet, images)


def test_lenet_digits_big_preset_padded_dense_walk():
    """lenet-digits' first convolution (1->16 3x3) on the 12x12 preset's 6 requantization
    lanes: its one dense word a pixel is shorter than the 24 steps the lanes need to drain a
    tile, so its walk takes a second word of zero weights (`systolic.hw.isa.dense_walk`),
    reading pixels below the kernel and off the map. Exact, one image and a batch, cycles
    as predicted."""
    qnet = random_qnet("lenet-digits", seed=3)
    images = random_images(qnet, 4, seed=4)
    cfg = preset("big")
    prog = compile_network(qnet, cfg)
    assert (prog.layers[0].fields["dense"], prog.layers[0].fields["kh"]) == (1, 2)
    for batch in (1, 2):
        _exact(simulate(qnet, images, cfg, batch=batch), qnet, images)


def test_batch_identical_to_single_runs():
    """Eleven images in batches of four (4 + 4 + 3: the last runs the network compiled for
    three) give exactly the logits of eleven single runs, and of the golden model; every
    layer's output of a traced batch is exact too."""
    qnet = random_qnet("lenet-digits", seed=2)
    images = random_images(qnet, 11, seed=9)
    cfg = preset("default")
    single = simulate(qnet, images, cfg, jobs=1)
    batched = simulate(qnet, images, cfg, jobs=1, batch=4, dense_input=True)
    np.testing.assert_array_equal(batched.logits, single.logits)
    _exact(single, qnet, images)
    _exact(batched, qnet, images)
    assert batched.batches.tolist() == [4] * 8 + [3] * 3
    assert batched.as_dict()["utilization"] > single.as_dict()["utilization"]
    traced = simulate(qnet, images[:5], cfg, jobs=1, batch=5, trace=True)
    _exact(traced, qnet, images[:5])
    assert traced.first_difference is None


def test_linear_after_wide_map():
    """A fully connected layer after a 16-channel 12x12 map (flattening as a layout, wider
    than any kernel the engine walks): exact against the golden model, in batches."""
    import torch
    from systolic.sw import quantize

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(16 * 12 * 12, 10))
    rng = np.random.default_rng(0)
    calib = rng.random((32, 1, 12, 12)).astype(np.float32)
    qnet = quantize.quantize(model, calib, input_shape=(1, 12, 12), p_max=255,
                             dataset="mnist", arch="custom")
    images = rng.integers(0, 128, (6, 1, 12, 12)).astype(np.int8)
    report = simulate(qnet, images, preset("default"), batch=3, jobs=1)
    _exact(report, qnet, images)
    assert report.program.layers[-1].fields["cin_words"] == 12 * 12 * 2


def _dense_nets():
    """``(what, torch model, input shape)``: convolutions of few channels that run dense on
    the 8-lane default preset. First layers of one channel over kernel sizes (kernel rows a
    reduction word holds: 8 // kw), strides, paddings and channel tiles; a three-channel
    first layer (its packed input repeated every three lanes) and a two-channel one of stride
    2 and padding 2; and second layers reading
    a map whose producer computes its channels two or more times over (through pooling)."""
    import torch
    from torch import nn

    def head(model, shape):
        n = model(torch.zeros(1, *shape)).numel()
        return nn.Sequential(model, nn.Flatten(), nn.Linear(n, 4))

    nets = []
    for h, w, cout, kh, kw, stride, pad in [
        (9, 7, 5, 2, 2, 1, 0),          # four kernel rows a word: the whole kernel in one
        (12, 11, 9, 5, 5, 2, 2),        # one row of 5 lanes a word, five; two channel tiles
        (10, 10, 8, 4, 3, 1, 3),        # two rows a word, the second word's second past the
                                        # kernel; padding 3
        (8, 9, 4, 7, 7, 1, 3),          # the largest kernel: a row of 7 lanes a word
        (7, 13, 6, 3, 4, 2, 1),         # a kernel wider than high, stride 2
    ]:
        torch.manual_seed(h * w + kh)
        conv = nn.Sequential(nn.Conv2d(1, cout, (kh, kw), stride, pad), nn.ReLU())
        nets.append((f"1->{cout} {kh}x{kw} /{stride} pad {pad}", head(conv, (1, h, w)),
                     (1, h, w)))
    torch.manual_seed(1)
    rgb = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    nets.append(("3->8 3x3: two taps of three channels a word", head(rgb, (3, 9, 9)),
                 (3, 9, 9)))
    torch.manual_seed(2)
    two = nn.Sequential(nn.Conv2d(2, 6, 5, stride=2, padding=2), nn.ReLU())
    nets.append(("2->6 5x5 /2 pad 2: four taps of two channels a word", head(two, (2, 11, 10)),
                 (2, 11, 10)))
    for c1, c2, k2, pool in [
        (4, 8, 3, False),               # two taps of 4 channels a word, two words a row
        (2, 6, 3, False),               # a whole row of 2 channels a word
        (3, 16, 5, False),              # two taps of 3 channels; two output tiles
        (2, 5, 2, False),               # two whole rows a word
        (4, 12, 3, True),               # pooled: pairs in three tiles of 4 channels, each
                                        # writing half of a word (not two tiles of pixels)
    ]:
        torch.manual_seed(c1 * 10 + c2)
        two = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(c1, c2, k2, padding=1), nn.ReLU(),
                            *([nn.MaxPool2d(2)] if pool else []))
        nets.append((f"1->{c1}, pool, {c1}->{c2} {k2}x{k2}" + (", pool: halves" if pool else ""),
                     head(two, (1, 16, 16)), (1, 16, 16)))
    return nets


@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
def test_dense_conv_shapes(deep):
    """Convolutions of few input channels run dense on chip (several taps in each reduction
    word, each lane reading its own pixel from its own slice of the activation memory), in
    batches of two: every value of every layer's output exact against the golden model,
    every layer's cycles as the model predicts, fewer cycles than the same layer run plain,
    and the logits those of the network run without dense convolutions. With
    ``deep_pipeline`` the lanes' taps come from tables (`systolic.hw.conv`), each lane's
    looked up from a copy of the descriptor's key, and are ready within PREP's cycles; and
    with ``dense_raster`` the layers of two and three channels walk their taps in raster order
    (`systolic.hw.isa.dense_walk`)."""
    from systolic.sw import quantize

    cfg = preset("default").replace(deep_pipeline=deep, dense_raster=deep)
    rng = np.random.default_rng(11)
    for what, model, shape in _dense_nets():
        calib = rng.random((32, *shape)).astype(np.float32)
        qnet = quantize.quantize(model, calib, input_shape=shape, p_max=255, dataset="mnist",
                                 arch="custom")
        images = rng.integers(0, 128, (3, *shape)).astype(np.int8)
        report = simulate(qnet, images, cfg, batch=2, jobs=1, trace=True)
        dense = [n for n, lay in enumerate(report.program.layers) if lay.fields.get("dense")]
        assert dense == [n for n, lay in enumerate(report.program.layers)
                         if lay.kind == "conv"], what
        # A 2x2 max pooling runs fused into the convolution before it (`fuse_pool`), and one
        # whose 1, 2 or 4 channels repeat in each half of an 8-lane word runs in pixel pairs
        # (`pair_pixels`).
        first = report.program.layers[0].fields
        assert first.get("pool", 0) == ("pool" in what), what
        assert first.get("pairs", 0) == what.startswith(("1->4,", "1->2,")), what
        second = report.program.layers[1].fields
        assert (second.get("pairs", 0), second.get("halves", 0)) == (
            ("halves" in what,) * 2), what
        if what.startswith(("3->8", "2->6")):
            # Two taps of three channels a word (four of two): with ``dense_raster`` the
            # kernel's taps in raster order, 5 words (7), each lane wrapping to the next
            # kernel row on its own (at the padding too); else 3 rows of 2 words (5 of 2).
            walks = {"3": ((1, 1, 5), (3, 2, 1)), "2": ((1, 1, 7), (5, 2, 1))}[what[0]]
            assert (first["kh"], first["kw"], first["cin_words"]) == walks[not deep], what
        _exact(report, qnet, images)
        assert report.first_difference is None, what
        plain = simulate(qnet, images, cfg, batch=2, jobs=1, dense_conv=False)
        assert not any(lay.fields.get("dense") for lay in plain.program.layers)
        np.testing.assert_array_equal(report.logits, plain.logits)
        for n in dense:
            assert (report.layer_cycles[:, n] < plain.layer_cycles[:, n]).all(), what


def test_dense_raster_three_rows():
    """A raster walk (`systolic.hw.isa.dense_walk`) on the fewest rows it runs on
    (`systolic.hw.isa.dense_raster`: each lane's next step is worked out in the two cycles
    after its last, and a block of three rows takes three): the three- and two-channel
    first layers of `_dense_nets` on a 3x8 array with ``dense_raster`` and `deep_pipeline`,
    in raster order, every value of every layer and the cycles exact, in a batch of two; two
    rows are refused."""
    from systolic.hw.config import ConfigError
    from systolic.hw.isa import dense_raster
    from systolic.sw import quantize

    cfg = preset("default").replace(rows=3, deep_pipeline=True, dense_raster=True)
    assert dense_raster(cfg)
    with pytest.raises(ConfigError, match=r"^dense_raster needs dense_conv and three rows or "
                                          r"more .* not dense_conv=True and rows 2; set "
                                          r"dense_raster=False$"):
        cfg.replace(rows=2)
    rng = np.random.default_rng(5)
    nets = [net for net in _dense_nets() if net[0].startswith(("3->8", "2->6"))]
    assert len(nets) == 2
    for what, model, shape in nets:
        calib = rng.random((32, *shape)).astype(np.float32)
        qnet = quantize.quantize(model, calib, input_shape=shape, p_max=255, dataset="mnist",
                                 arch="custom")
        images = rng.integers(0, 128, (3, *shape)).astype(np.int8)
        report = simulate(qnet, images, cfg, batch=2, jobs=1, trace=True)
        first = report.program.layers[0].fields
        assert (first["dense"], first["kh"], first["kw"]) == (1, 1, 1), what
        assert first["cin_words"] > 1, what
        _exact(report, qnet, images)
        assert report.first_difference is None, what


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (2, 2), (3, 3)])
def test_narrow_array_stalls_as_modelled(rows, cols):
    """On arrays of fewer than 4 columns the fill cannot keep up with the array: a transposer
    bank's round trip (`bank_cycles`, 5 to 7 cycles here) is longer than the ``2 * cols`` the
    array takes for two blocks, and every second block waits. Layers of 6, 2, 7 and 21 blocks
    (odd and even, channel tiles following one another) take exactly the cycles the model
    gives them, with the stall, and every logit is exact."""
    import torch
    from systolic.sw import quantize

    c = cols
    torch.manual_seed(rows)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3 * c, 2 * c, 1), torch.nn.ReLU(),     # 2 tiles of 3 words: 6 blocks
        torch.nn.Conv2d(2 * c, c, 1), torch.nn.ReLU(),         # 1 tile of 2 words: 2
        torch.nn.Conv2d(c, 7 * c, 1), torch.nn.ReLU(),         # 7 tiles of 1 word: 7
        torch.nn.Flatten(), torch.nn.Linear(7 * c, 3 * c)).eval()  # 3 tiles of 7 words: 21
    shape = (3 * c, 1, 1)
    rng = np.random.default_rng(rows)
    qnet = quantize.quantize(model, rng.random((16, *shape)).astype(np.float32),
                             input_shape=shape, p_max=255, dataset="mnist", arch="custom")
    cfg = preset("default").replace(rows=rows, cols=cols, act_depth=256, weight_depth=1024,
                                    max_dim=15, max_kernel=3, pool_avg=False,
                                    eltwise=False)
    images = rng.integers(0, 128, (2, *shape)).astype(np.int8)
    report = simulate(qnet, images, cfg, jobs=1)
    _exact(report, qnet, images)
    blocks = [lay.fields["cout_tiles"] * lay.fields["cin_words"] for lay in report.program.layers]
    assert blocks == [6, 2, 7, 21]
    # The stall, by hand: (bank_cycles - 2 * cols) cycles for every second block after the
    # first, floor((B - 1) / 2) of them: 2, 0, 3 and 10.
    stall = {1: 3, 2: 2, 3: 1}[cols]
    assert [perfmodel.feed_cycles(cfg, b) - b * cols for b in blocks] == [
        2 * stall, 0, 3 * stall, 10 * stall]


def test_lost_reply_is_a_link_error_not_a_hang():
    """A reply that never comes (a request the controller answers with fewer bytes than asked
    for) ends within the cycle budget as a `protocol.LinkError`."""
    cfg = preset("default")
    top, name, _ = network_top(cfg)
    exe = build_harness(top, name=name)
    with Harness(exe) as harness:
        link = HarnessLink(harness, budget=20_000)

        async def ask():
            await link.send(protocol.status_request())
            return await link.recv(200)

        with pytest.raises(protocol.LinkError, match="reply stopped after"):
            asyncio.run(ask())
        cycles, _ = harness.info()
        assert 20_000 <= cycles < 40_000
        # The harness is still in step: a STATUS request gets its whole reply.
        harness.queue((BYTE, b) for b in protocol.status_request())
        head = harness.recv(4, 10_000)
        assert head[0] == 0x5A
        rest = harness.recv(int.from_bytes(head[2:4], "little") + 2, 10_000)
        (reply,) = protocol.ReplyParser().feed(head + rest)
        reply.check()


def test_float_images_are_refused():
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 2).astype(np.float32) / 127
    with pytest.raises(SystolicError, match=r"^images must be int8 \(quantized"):
        simulate(qnet, images, preset("default"))
    with pytest.raises(SystolicError, match=r"^images must be an array of shape \(N, 1, 8, 8\)"):
        simulate(qnet, np.zeros((2, 8, 8), np.int8), preset("default"))


@pytest.mark.parametrize(("text", "window"), [("0", (0, 1)), ("2:5", (2, 5)), ("all", (0, 6))])
def test_waves_window(text, window):
    assert parse_window(text, 6) == window


@pytest.mark.parametrize("text", ["6", "3:2", "x", "1:9"])
def test_waves_window_errors(text):
    with pytest.raises(SystolicError, match=r"^--waves must"):
        parse_window(text, 6)


def test_deep_pipeline_without_fetch_ahead():
    """``deep_pipeline`` without ``fetch_ahead``: the controller's shift register does not lag
    then (its copy, `shift_q`, is what lags), so RUN_LOAD takes as many cycles as without the
    stages (`controller.fetch_cycles`); lenet-digits exact, cycles as modelled."""
    from systolic.hw.controller import fetch_cycles

    cfg = preset("default").replace(deep_pipeline=True, fetch_ahead=False)
    assert fetch_cycles(cfg) == fetch_cycles(cfg.replace(deep_pipeline=False))
    assert fetch_cycles(cfg.replace(fetch_ahead=True)) == fetch_cycles(cfg) + 2
    qnet = random_qnet("lenet-digits")
    images = random_images(qnet, 2, seed=7)
    _exact(simulate(qnet, images, cfg, batch=2, jobs=1), qnet, images)
