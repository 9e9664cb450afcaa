"""The compiler: descriptors and memory images of the built-in architectures, fit errors with
the message pinned, and the performance model's formula on known shapes."""

import dataclasses

import numpy as np
import pytest
from net_common import random_qnet
from systolic.hw import layout
from systolic.hw.config import AcceleratorConfig, preset
from systolic.hw.isa import Mem, Op, describe_conv, pack_descriptor
from systolic.sw import perfmodel
from systolic.sw.compiler import FitError, compile_network, im2col, largest_batch
from systolic.sw.errors import SystolicError
from systolic.sw.qnet import Conv, Flatten, Linear, Pool, QNet


def _conv(cin, cout, k, *, stride=1, pad=0, relu=True):
    return Conv(np.ones((cout, cin, k, k), np.int8), np.zeros(cout, np.int32),
                np.full(cout, 1, np.uint16), np.full(cout, 10, np.uint8), stride, pad, relu,
                1.0, np.ones(cout))


def _linear(k, cout):
    return Linear(np.ones((cout, k), np.int8), np.zeros(cout, np.int32),
                  np.full(cout, 1, np.uint16), np.full(cout, 10, np.uint8), False, 1.0,
                  np.ones(cout))


def _net(layers, shape):
    return QNet(layers, shape, 255, "mnist", "custom")


@pytest.mark.parametrize("arch", ["lenet-digits", "lenet5"])
@pytest.mark.parametrize("name", ["default", "big"])
def test_builtin_archs_compile(arch, name):
    cfg = preset(name)
    qnet = random_qnet(arch)
    prog = compile_network(qnet, cfg, dense_conv=False)     # (dense: test_dense_conv_on_chip)
    # Each 2x2 /2 max pooling after a convolution runs fused into it (test_fused_pool).
    fused = [i for i, lay in enumerate(qnet.layers[:-1]) if isinstance(lay, Conv)
             and isinstance(qnet.layers[i + 1], Pool)
             and (qnet.layers[i + 1].kind, qnet.layers[i + 1].kernel,
                  qnet.layers[i + 1].stride) == ("max", 2, 2)]
    assert fused
    hw = [i for i, lay in enumerate(qnet.layers) if not isinstance(lay, Flatten)
          and i not in fused]
    assert [lay.index for lay in prog.layers] == hw
    assert [lay.first for lay in prog.layers if lay.first is not None] == fused
    assert all(lay.fields.get("pool") == (lay.first is not None) for lay in prog.layers
               if lay.kind == "conv")
    # Ping-pong: each layer reads where the previous one wrote, never where it writes.
    src = prog.input_base
    for lay in prog.layers:
        assert lay.fields["in_base"] == src
        assert lay.fields["out_base"] != src
        assert pack_descriptor(cfg, lay.fields) == lay.command
        src = lay.out_base
    assert prog.output_base == src
    assert prog.act_words <= cfg.act_depth
    assert len(prog.weights) <= cfg.weight_depth
    assert len(prog.params) <= cfg.param_depth
    # The weight image is the concatenation of each layer's words, at its w_base.
    for lay, base in zip(prog.layers, prog.w_bases):
        layer = qnet.layers[lay.index if lay.first is None else lay.first]
        if isinstance(layer, Conv):
            words = layout.conv_weight_words(cfg, layer.w)
        elif isinstance(layer, Linear):
            words = layout.conv_weight_words(cfg, layout.linear_as_conv(layer.w, lay.in_shape))
        else:
            assert base is None
            assert lay.fields["op"] in (Op.MAXPOOL, Op.AVGPOOL)
            continue
        assert lay.fields["w_base"] == base
        assert prog.weights[base:base + len(words)] == words
    assert prog.classes == 10
    assert prog.output_words == -(-10 // cfg.cols)
    loads = prog.loads()
    assert sum(1 for m, _, _ in loads if m == Mem.WEIGHT) == len(prog.weights)


def test_lenet_digits_descriptors():
    qnet = random_qnet("lenet-digits")
    prog = compile_network(qnet, preset("default").replace(fused_pool=False))
    got = [(lay.kind, lay.in_shape, lay.out_shape, lay.macs) for lay in prog.layers]
    assert got == [
        ("conv", (1, 8, 8), (16, 8, 8), 8 * 8 * 16 * 9),
        ("maxpool", (16, 8, 8), (16, 4, 4), 0),
        ("conv", (16, 4, 4), (32, 4, 4), 4 * 4 * 32 * 16 * 9),
        ("maxpool", (32, 4, 4), (32, 2, 2), 0),
        ("linear", (32, 2, 2), (10, 1, 1), 128 * 10),
    ]
    # Fused: each convolution writes its pooled map; it walks the whole map.
    fused = compile_network(qnet, preset("default"))
    got = [(lay.name, lay.kind, lay.in_shape, lay.out_shape, lay.macs, lay.fields.get("pool"),
            lay.fields["out_h"]) for lay in fused.layers]
    assert got == [
        ("layer 0 (conv 1->16 3x3) + 1 (maxpool)", "conv", (1, 8, 8), (16, 4, 4),
         8 * 8 * 16 * 9, 1, 8),
        ("layer 2 (conv 16->32 3x3) + 3 (maxpool)", "conv", (16, 4, 4), (32, 2, 2),
         4 * 4 * 32 * 16 * 9, 1, 4),
        ("layer 5 (linear 128->10)", "linear", (32, 2, 2), (10, 1, 1), 128 * 10, None, 1),
    ]
    assert fused.weights == prog.weights
    fc = prog.layers[-1].fields
    # Flattening is a layout: the 32x2x2 map is one pixel of 2 * 2 * 4 words.
    assert (fc["kh"], fc["kw"], fc["cin_words"], fc["cout_tiles"], fc["pad"]) == (1, 1, 16, 2, 0)


def test_input_and_output_words():
    cfg = preset("default")
    qnet = random_qnet("lenet-digits")
    prog = compile_network(qnet, cfg, dense_conv=False)
    image = np.arange(64, dtype=np.int8).reshape(1, 8, 8)
    assert prog.input_words(image) == layout.pack_activations(cfg, image)
    logits = np.arange(-5, 5, dtype=np.int8)
    words = layout.pack_activations(cfg, logits.reshape(10, 1, 1))
    np.testing.assert_array_equal(prog.decode_output(words), logits)
    with pytest.raises(SystolicError, match=r"^image must be int8 \(1, 8, 8\), not int16 "):
        prog.input_words(image.astype(np.int16))


def test_kernel_too_large():
    cfg = preset("default")
    qnet = _net([_conv(1, 4, 9), Flatten(), _linear(4 * 4 * 4, 3)], (1, 12, 12))
    with pytest.raises(FitError, match=r"^layer 0 \(conv 1->4 9x9\): kernel size must be at "
                                       r"most max_kernel 7, not 9x9; use a smaller kernel"):
        compile_network(qnet, cfg)


def test_linear_over_wide_map():
    """Flattening is a layout: a linear layer after a 16-channel 12x12 map (wider than any
    kernel) is one pixel of all the map's 288 words."""
    qnet = _net([_conv(1, 16, 3, pad=1), Flatten(), _linear(16 * 12 * 12, 3)], (1, 12, 12))
    prog = compile_network(qnet, preset("default"))
    fc = prog.layers[-1].fields
    assert (fc["in_h"], fc["in_w"], fc["kh"], fc["kw"], fc["cin_words"]) == (1, 1, 1, 1, 288)


def test_batch_layout():
    """A batch's images lie one after the other in each tensor; convolutions take the whole
    batch in one command, aligned pooling stacks the images (as many as max_dim rows allow),
    unaligned pooling takes a command an image."""
    cfg = AcceleratorConfig(act_depth=4096, max_dim=16, fused_pool=False)
    qnet = _net([_conv(1, 8, 3, pad=1), Pool("max", 2, 2), _conv(8, 8, 1),
                 Pool("max", 3, 2), Flatten(), _linear(8, 4)], (1, 8, 8))
    prog = compile_network(qnet, cfg, batch=5)
    conv, pool, conv2, pool2, fc = prog.layers
    assert [f["batch"] for f in conv.entries] == [5]
    assert conv.fields["in_img_step"] == 64
    # 8 rows an image, max_dim 16: two images a command.
    assert [(f["in_h"], f["in_base"] - pool.entries[0]["in_base"]) for f in pool.entries] == [
        (16, 0), (16, 128), (8, 256)]
    assert [f["out_base"] - pool.entries[0]["out_base"] for f in pool.entries] == [0, 32, 64]
    # A 3x3 window with stride 2 on 4 rows would straddle two images.
    assert [f["in_h"] for f in pool2.entries] == [4] * 5
    assert fc.fields["batch"] == 5
    assert prog.entry_range(2) == (4, 1)
    assert len(prog.commands) == 1 + 3 + 1 + 5 + 1
    # The same weights whatever the batch.
    assert prog.weights == compile_network(qnet, cfg).weights


def test_batch_too_large():
    qnet = random_qnet("lenet-digits")
    cfg = preset("default")
    fits = largest_batch(qnet, cfg)
    # Ping-pong: the input (64 words) or the second pooled map, then the first pooled map.
    assert fits == cfg.act_depth // (64 + 32)
    compile_network(qnet, cfg, batch=fits)
    with pytest.raises(FitError, match=rf"^a batch of {fits + 1} images must fit act_depth "
                                       rf"{cfg.act_depth} words, not {(fits + 1) * 96} "
                                       rf"\(96 words an image\); "
                                       rf"the largest batch that fits is {fits}$"):
        compile_network(qnet, cfg, batch=fits + 1)
    with pytest.raises(FitError, match="batch must be an integer from 1 to 255, not 0"):
        compile_network(qnet, cfg, batch=0)


def test_dense_input():
    """A first convolution with one input channel takes its im2col input: a 1x1 convolution
    of 9 channels, its weights in (ky, kx, c) order; the host packs the image."""
    qnet = random_qnet("lenet-digits")
    cfg = preset("default")
    prog = compile_network(qnet, cfg, dense_input=True)
    conv = prog.layers[0]
    assert prog.dense == (3, 3, 1, 1)
    assert conv.in_shape == (9, 8, 8)
    assert (conv.fields["kh"], conv.fields["cin_words"], conv.fields["pad"]) == (1, 2, 0)
    assert prog.input_lanes == 0
    assert prog.image_words == 128
    image = np.arange(64, dtype=np.int8).reshape(1, 8, 8)
    cols = im2col(image, 3, 3, 1, 1)
    assert cols.shape == (9, 8, 8)
    assert cols[4].tolist() == image[0].tolist()                # the centre tap
    assert cols[0, 0].tolist() == [0] * 8                       # above the image: padding
    assert cols[0, 1, 1:].tolist() == image[0, 0, :7].tolist()  # tap (-1, -1)
    assert prog.input_words(image) == layout.pack_activations(cfg, cols)
    w = qnet.layers[0].w
    dense_w = w.transpose(0, 2, 3, 1).reshape(16, 9, 1, 1)
    assert prog.weights[:len(layout.conv_weight_words(cfg, dense_w))] == \
        layout.conv_weight_words(cfg, dense_w)
    # A first layer with as many channels as columns is left alone.
    assert compile_network(_net([_conv(8, 8, 3), Flatten(), _linear(8 * 6 * 6, 2)],
                                (8, 8, 8)), cfg, dense_input=True).dense is None


def test_pair_pixels():
    """lenet5's first convolution (1->6 5x5 on 12 lanes, its pooled output read dense) computes
    its output pixels in pairs: 12 columns, the right six one pixel further with a 5x6 kernel,
    a walk of 12 pairs a row two pixels apart, the fused pooling folding each word's halves."""
    from systolic.hw.isa import dense_walk, pairs_supported
    from systolic.sw.compiler import _dense_weights

    qnet = random_qnet("lenet5")
    cfg = preset("big")
    prog = compile_network(qnet, cfg)
    f = prog.layers[0].fields
    assert (f["pairs"], f["pool"], f["dense"], f["dkw"], f["out_h"], f["out_w"], f["x_step"],
            f["cout_tiles"]) == (1, 1, 1, 6, 24, 12, 2, 1)
    assert (f["kh"], f["kw"], f["cin_words"]) == dense_walk(cfg, 5, 5, 1) == dense_walk(
        cfg, 5, 6, 1) == (3, 1, 1)
    assert f["y_step"] == 28 - 11 * 2
    assert prog.layers[0].out_shape == (6, 12, 12)
    assert prog.layers[0].macs == 24 * 24 * 6 * 25
    w = qnet.layers[0].w
    wide = np.zeros((12, 1, 5, 6), np.int8)
    wide[:6, :, :, :5], wide[6:, :, :, 1:] = w, w
    assert prog.weights[:prog.w_bases[1]] == layout.conv_weight_words(
        cfg, _dense_weights(cfg, wide))
    # Its MACs in about half the cycles of the pixel-by-pixel walk (a tile's fixed cost
    # stays).
    single = compile_network(qnet, cfg.replace(fused_pool=False))
    assert "pairs" not in single.layers[0].fields
    assert 100 * perfmodel.predict_layer(cfg, prog.layers[0]) < 55 * perfmodel.predict_layer(
        cfg, single.layers[0])
    # Where a pair would cost more or its halves could not repeat the channels: not paired.
    assert pairs_supported(cfg, cin=1, cout=6, kh=5, kw=5, stride=1)
    assert not pairs_supported(cfg, cin=1, cout=6, kh=5, kw=5, stride=2)
    assert not pairs_supported(cfg, cin=1, cout=4, kh=5, kw=5, stride=1)       # 4 ∤ 6
    assert not pairs_supported(cfg, cin=1, cout=6, kh=7, kw=7, stride=1)       # 7x8
    assert not pairs_supported(preset("default"), cin=1, cout=4, kh=4, kw=4, stride=1)
    assert pairs_supported(preset("default"), cin=1, cout=4, kh=3, kw=3, stride=1)
    # lenet-digits' 16 channels fill the columns already.
    assert "pairs" not in compile_network(random_qnet("lenet-digits"), preset(
        "default")).layers[0].fields


def test_pair_pixels_in_half_word_tiles():
    """lenet5's second convolution (6->16 5x5 on 12 columns, pooled, read by a linear layer)
    runs in pixel pairs in three channel tiles of six, each writing half of the two words of
    a pixel, not in two tiles of single pixels (12 + 4 columns busy): fewer cycles, the map in
    the activation layout."""
    from systolic.hw.isa import describe_dense_conv, fuse_pool, pairs_supported
    from systolic.sw.compiler import _dense_weights

    qnet = random_qnet("lenet5")
    cfg = preset("big")
    prog = compile_network(qnet, cfg)
    f = prog.layers[1].fields
    assert (f["pairs"], f["halves"], f["pool"], f["dense"], f["cout_tiles"], f["out_w"],
            f["dkw"]) == (1, 1, 1, 1, 3, 4, 6)
    assert prog.layers[1].out_shape == (16, 4, 4)
    assert prog.layers[1].out_words == 16 * 2              # two words a pixel
    assert prog.layers[0].fields["halves"] == 0          # its channels repeat for conv 2
    # Tile t computes channels 6t..6t+5 (none past 15) on the left and right halves.
    w, b = qnet.layers[2].w, qnet.layers[2].b
    wide = np.zeros((36, 6, 5, 6), np.int8)
    bias = np.zeros(36, b.dtype)
    for t in range(3):
        for j in range(12):
            c = 6 * t + j % 6
            if c < 16:
                wide[12 * t + j, :, :, j // 6:j // 6 + 5] = w[c]
                bias[12 * t + j] = b[c]
    base = prog.w_bases[1]
    assert prog.weights[base:prog.w_bases[2]] == layout.conv_weight_words(
        cfg, _dense_weights(cfg, wide))
    single = fuse_pool(cfg, describe_dense_conv(cfg, cin=6, h=12, w=12, cout=16, kh=5, kw=5,
                                                batch=f["batch"]))
    assert 100 * perfmodel.predict_layer(cfg, prog.layers[1]) < 80 * perfmodel.predict_cycles(
        cfg, single)
    # Pairs pay when the channels fill fewer half-word tiles than twice their word tiles.
    assert pairs_supported(cfg, cin=6, cout=16, kh=5, kw=5, stride=1, repeat=False)
    assert pairs_supported(cfg, cin=6, cout=6, kh=5, kw=5, stride=1, repeat=False)
    assert not pairs_supported(cfg, cin=6, cout=12, kh=5, kw=5, stride=1, repeat=False)
    assert not pairs_supported(cfg, cin=6, cout=24, kh=5, kw=5, stride=1, repeat=False)
    assert not pairs_supported(preset("default"), cin=4, cout=16, kh=3, kw=3, stride=1,
                               repeat=False)
    assert not pairs_supported(cfg, cin=6, cout=16, kh=5, kw=5, stride=1)   # 16 ∤ 6


def test_pair_rows():
    """lenet5's first convolution (1->6 5x5) on the 8x16 preset: its horizontal pairs would take
    three reduction words (5x6: two kernel rows a word), its vertical ones two (6x5: three rows
    a word), and its six channels do not divide the half word, so it computes its output pixels
    in vertical pairs: a 6x5 kernel, the lower half's one row further down, a walk of 12 rows
    of pairs two input rows apart, each half of the word holding channels 0-5, 4, 5, which its
    dense reader's (6->16 5x5, two taps of six lanes) weights follow."""
    from systolic.hw.isa import dense_walk, pairs_supported, vpair_channels, vpairs_supported
    from systolic.sw.compiler import _dense_weights

    qnet = random_qnet("lenet5")
    cfg = preset("wide")
    prog = compile_network(qnet, cfg)
    f = prog.layers[0].fields
    assert (f["vpairs"], f.get("pairs", 0), f["halves"], f["pool"], f["dense"], f["dkh"],
            f["dkw"], f["out_h"], f["out_w"], f["x_step"], f["cout_tiles"]) == \
        (1, 0, 0, 1, 1, 6, 5, 12, 24, 1, 1)
    assert (f["kh"], f["kw"], f["cin_words"]) == dense_walk(cfg, 6, 5, 1) == dense_walk(
        cfg, 5, 5, 1) == (2, 1, 1)
    assert dense_walk(cfg, 5, 6, 1) == (3, 1, 1)
    assert f["y_step"] == 2 * 28 - 23
    assert prog.layers[0].out_shape == (6, 12, 12)
    assert prog.layers[0].macs == 24 * 24 * 6 * 25
    channels = vpair_channels(cfg, 6, 12)
    assert channels == (0, 1, 2, 3, 4, 5, 4, 5)
    w, b = qnet.layers[0].w, qnet.layers[0].b
    tall = np.zeros((16, 1, 6, 5), np.int8)
    for j in range(16):
        tall[j, :, j // 8:j // 8 + 5] = w[channels[j % 8]]
    first = prog.weights[prog.w_bases[0]:prog.w_bases[0] + prog.w_words[0]]
    assert first == layout.conv_weight_words(cfg, _dense_weights(cfg, tall))
    assert prog.params[:cfg.rq_groups] == layout.pack_params(
        cfg, *(v[[channels[j % 8] for j in range(16)]]
               for v in (b, qnet.layers[0].M, qnet.layers[0].s)))
    # The reader's lane l (tap l // 6) weighs channel channels[l % 8], not l % 6.
    reader = prog.layers[1]
    w2 = qnet.layers[2].w
    got = prog.weights[prog.w_bases[1]:prog.w_bases[1] + prog.w_words[1]]
    assert got == layout.conv_weight_words(cfg, _dense_weights(cfg, w2, channels))
    assert got != layout.conv_weight_words(cfg, _dense_weights(cfg, w2))
    assert (reader.fields["dense"], reader.fields.get("vpairs", 0)) == (1, 0)
    # Half the cycles of the pixel-by-pixel walk (a tile's fixed cost stays).
    plain = compile_network(qnet, cfg.replace(fused_pool=False))
    assert 100 * perfmodel.predict_layer(cfg, prog.layers[0]) < 55 * (
        perfmodel.predict_layer(cfg, plain.layers[0]) + perfmodel.predict_layer(
            cfg, plain.layers[1]))
    # Not where: a stride of 2; a requantizer of one cycle a word (the 8x8 `default`); a
    # kernel one row taller in more words; horizontal pairs that pack (the 12x12's).
    assert vpairs_supported(cfg, cin=1, cout=6, kh=5, kw=5, stride=1, lanes=12)
    assert not vpairs_supported(cfg, cin=1, cout=6, kh=5, kw=5, stride=2, lanes=12)
    assert not vpairs_supported(preset("default"), cin=1, cout=3, kh=3, kw=3, stride=1,
                                lanes=6)
    assert not vpairs_supported(cfg, cin=2, cout=6, kh=5, kw=5, stride=1, lanes=12)   # 6 words
    assert not pairs_supported(cfg, cin=1, cout=6, kh=5, kw=5, stride=1)
    assert compile_network(qnet, preset("big")).layers[0].fields.get("vpairs", 0) == 0
    # Channel layouts: each group of cout lanes up to the reader's holds every channel once.
    assert vpair_channels(cfg, 4, 16) == (0, 1, 2, 3, 0, 1, 2, 3)
    assert vpair_channels(cfg, 8, 16) == tuple(range(8))
    assert vpair_channels(cfg, 5, 15) is None          # lanes 5-9 and 10-14 cannot both
    assert vpair_channels(cfg, 5, 10) is not None
    assert vpair_channels(cfg, 9, 9) is None           # more than half a word


def test_dense_conv_on_chip():
    """By default a one-channel first convolution runs dense on chip where the configuration
    can: a 3x3 kernel on 8 lanes packs two kernel rows a reduction word (2 steps, not 9), its
    weights laid out so, the image stored with its pixel in every lane."""
    qnet = random_qnet("lenet-digits")
    cfg = preset("default")
    prog = compile_network(qnet, cfg)
    f = prog.layers[0].fields
    assert prog.dense_conv
    assert prog.dense is None
    assert (f["dense"], f["kh"], f["kw"], f["cin_words"], f["dkh"], f["dkw"], f["pad"]) == \
        (1, 2, 1, 1, 3, 3, 1)
    assert (f["tap_row_step"], f["w_tile_words"]) == (2 * 8 - 1, 2 * 8)
    assert prog.layers[0].in_shape == (1, 8, 8)
    assert prog.input_lanes == 1
    # Weight word d * 8 + l: lane l < 6 is tap (2d + l // 3, l % 3); lanes 6, 7 and row 3: 0.
    w = qnet.layers[0].w
    want = np.zeros((16, 16, 1, 1), np.int8)
    for channel, (ky, kx) in {0: (0, 0), 2: (0, 2), 4: (1, 1), 5: (1, 2), 8: (2, 0),
                              10: (2, 2)}.items():
        want[:, channel, 0, 0] = w[:, 0, ky, kx]
    want[:, 1, 0, 0], want[:, 3, 0, 0], want[:, 9, 0, 0] = \
        w[:, 0, 0, 1], w[:, 0, 1, 0], w[:, 0, 2, 1]
    assert prog.weights[:32] == layout.conv_weight_words(cfg, want)
    image = np.arange(64, dtype=np.int8).reshape(1, 8, 8)
    assert prog.input_words(image) == [v * 0x0101010101010101 for v in range(64)]
    # Off, asked for host im2col instead, or on a configuration without it: a plain 3x3 walk.
    for other in (compile_network(qnet, cfg, dense_conv=False),
                  compile_network(qnet, preset("small"))):
        assert not other.dense_conv
        assert other.layers[0].fields["kh"] == 3
        assert other.input_words(image) == list(range(64))
    host = compile_network(qnet, cfg, dense_input=True)
    assert host.dense == (3, 3, 1, 1)
    assert not host.dense_conv
    # At most cols / 2 input channels, and a kernel at least 2 wide, go dense.
    for layer, shape in [(_conv(5, 4, 3), (5, 8, 8)), (_conv(1, 4, 1), (1, 8, 8))]:
        net = _net([layer, Flatten(), _linear(4 * (8 - layer.w.shape[2] + 1) ** 2, 2)], shape)
        assert not compile_network(net, cfg).dense_conv


def test_dense_conv_config():
    """The iCE40's single-slice memories cannot run dense convolutions: its board turns them
    off, and asking for them there is a clear error. The ULX3S's build has them, as its
    preset."""
    from systolic.hw.boards import get_board
    from systolic.hw.config import ConfigError

    with pytest.raises(ConfigError, match="dense_conv needs the activation memory in column "
                                          "slices.*set dense_conv=False"):
        AcceleratorConfig(target="ice40")
    assert not get_board("icebreaker").config().dense_conv
    assert get_board("icebreaker").config("default").target == "ice40"
    assert get_board("ulx3s-85f").config("big").target == "ecp5"
    assert get_board("ulx3s-85f").config().dense_conv
    assert preset("default").dense_conv


def test_packed_words_must_repeat_or_be_zero():
    """A word sent in fewer lanes than it has must hold zeros in the others, or (with dense
    convolutions) repeat the lanes sent: anything else would be lost on the way."""
    from systolic.sw import protocol

    cfg = preset("default")
    assert protocol.write_requests(cfg, Mem.ACT, 0, [0x0505050505050505], lanes=1) == \
        protocol.write_requests(cfg, Mem.ACT, 0, [0x05], lanes=1)
    with pytest.raises(ValueError, match="must hold 0 in its other lanes, or repeat them: "
                                         "0x605"):
        protocol.write_requests(cfg, Mem.ACT, 0, [0x0605], lanes=1)
    with pytest.raises(ValueError, match="must hold 0 in its other lanes: 0x505"):
        protocol.write_requests(cfg.replace(dense_conv=False), Mem.ACT, 0, [0x0505], lanes=1)


def test_activations_do_not_fit():
    cfg = preset("small").replace(act_depth=2048)
    qnet = _net([_conv(1, 16, 3, pad=1), Flatten(), _linear(1, 1)], (1, 28, 28))
    qnet.layers[2] = _linear(16 * 28 * 28, 2)
    with pytest.raises(FitError, match=r"^activations must fit act_depth 2048 words, not 3920 "
                                       r"\(two ping-pong buffers of 784 and 3136 words; the "
                                       r"largest is the output of layer 0 \(conv 1->16 3x3\)"):
        compile_network(qnet, cfg)


def test_weights_do_not_fit():
    qnet = random_qnet("lenet5")
    with pytest.raises(FitError, match=r"^layer 5 \(linear 256->120\): weights must fit "
                                       r"weight_depth 4096 words, not 8680 \(this layer "
                                       r"needs 7680\); use a bigger "
                                       r"preset \(--preset big\) or fewer channels$"):
        compile_network(qnet, preset("small").replace(weight_depth=4096, act_depth=2048))


def test_params_do_not_fit():
    cfg = dataclasses.replace(preset("default"), param_depth=16)
    qnet = _net([_conv(1, 8, 1), _conv(8, 200, 1), Flatten(), _linear(200, 2)], (1, 1, 1))
    with pytest.raises(FitError, match=r"^layer 1 \(conv 8->200 1x1\): parameters must fit "
                                       r"param_depth 16 channel tiles, not 26; use a bigger "
                                       r"preset"):
        compile_network(qnet, cfg)


def test_map_wider_than_max_dim():
    cfg = AcceleratorConfig(max_dim=16)
    qnet = _net([_conv(1, 1, 7, stride=2), Flatten(), _linear(49, 2)], (1, 20, 20))
    with pytest.raises(FitError, match=r"^layer 0 \(conv 1->1 7x7\): input map 20x20 must be "
                                       r"at most max_dim 16 wide and high, not 20; "):
        compile_network(qnet, cfg)


def test_pool_line_buffer():
    cfg = AcceleratorConfig(max_dim=8)          # a line buffer of 32 words
    qnet = _net([_conv(1, 64, 1), Pool("max", 2, 1), Flatten(), _linear(64 * 7 * 7, 2)],
                (1, 8, 8))
    with pytest.raises(FitError, match=r"^layer 1 \(maxpool 2x2 /1\): an output row must fit "
                                       r"the pooling line buffer of 32 words, not 7 pixels x "
                                       r"8 words; use fewer channels"):
        compile_network(qnet, cfg)
    # Without a pooling engine, only a pooling fused into its convolution runs.
    with pytest.raises(FitError, match=r"^layer 1 \(maxpool 2x2 /1\): this pooling needs the "
                                       r"pooling engine \(only a 2x2 max pooling with stride 2 "
                                       r"right after a convolution runs fused into it\); use a "
                                       r"configuration with pool=True \(--pool\)$"):
        compile_network(qnet, cfg.replace(pool=False))


def test_fused_pool_without_pooling_engine():
    # A 2x2 /2 max pooling after a convolution compiles into it: the same program with or
    # without the pooling engine; without fused_pool it needs the engine.
    qnet = _net([_conv(1, 8, 3), Pool("max", 2, 2), Flatten(), _linear(8 * 3 * 3, 2)],
                (1, 8, 8))
    cfg = preset("default")
    with_engine = compile_network(qnet, cfg)
    without = compile_network(qnet, cfg.replace(pool=False))
    assert [lay.kind for lay in without.layers] == ["conv", "linear"]
    assert without.commands == with_engine.commands
    assert without.weights == with_engine.weights
    assert without.params == with_engine.params
    with pytest.raises(FitError, match=r"^layer 1 \(maxpool 2x2 /2\): this pooling needs the "
                                       r"pooling engine "):
        compile_network(qnet, cfg.replace(pool=False, fused_pool=False))


def test_avgpool_needs_pool_avg():
    qnet = _net([_conv(1, 4, 1), Pool("avg", 2, 2), Flatten(), _linear(16, 2)], (1, 4, 4))
    compile_network(qnet, preset("default"))
    with pytest.raises(FitError, match=r"^layer 1 \(avgpool 2x2 /2\): this configuration's "
                                       r"pooling engine only takes the maximum \(pool_avg="
                                       r"False\); use max pooling in the model or a "
                                       r"configuration with pool_avg=True \(the default, wide "
                                       r"and big presets; --pool-avg\)$"):
        compile_network(qnet, preset("small"))


def test_reduction_padded_for_requant_lanes():
    """Fewer requantization lanes than columns: a tile's sums must be drained before the next
    tile replaces them (the RTL gives wrong sums otherwise), so a shorter reduction walks more
    kernel rows, weighing 0 (`pad_walk`; exact in RTL: tests/test_conv_unit.py)."""
    cfg = AcceleratorConfig(rows=2, cols=4, requant_lanes=1)
    ok = _net([_conv(5, 8, 1), Flatten(), _linear(8, 2)], (5, 1, 1))
    prog = compile_network(ok, cfg)                # 8 steps >= 2 rows * 4 groups, 4 + 1 * 3
    assert [lay.fields["kh"] for lay in prog.layers] == [1, 1]
    short = _net([_conv(3, 4, 1), Flatten(), _linear(4, 2)], (3, 1, 1))
    prog = compile_network(short, cfg)
    conv, lin = prog.layers
    assert (conv.fields["kh"], conv.fields["kw"], conv.fields["w_tile_words"]) == (2, 1, 8)
    assert (conv.fields["out_h"], conv.fields["out_w"]) == (1, 1)
    assert (lin.fields["kh"], lin.fields["w_tile_words"]) == (2, 8)
    assert prog.w_bases == [0, 8]
    assert len(prog.weights) == 16
    # The padding row's weight words are zero words.
    assert not any(prog.weights[4:8])
    assert not any(prog.weights[12:16])
    assert any(prog.weights[:4])
    one_row = compile_network(short, cfg.replace(rows=1))         # 4 steps are enough
    assert [lay.fields["kh"] for lay in one_row.layers] == [1, 1]


def test_dense_walk_padded_for_requant_lanes():
    """A dense convolution whose words are fewer than the requantization lanes need walks more
    rows of words, their weights 0 (12x12, 6 lanes: 24 steps a tile; a 3x3 kernel of one
    channel packs into one word of 12 lanes, four kernel rows of three taps)."""
    from systolic.hw.isa import dense_supported, dense_walk, drain_steps
    from systolic.sw.compiler import _dense_weights

    cfg = preset("big")
    assert (cfg.rq_lanes, drain_steps(cfg)) == (6, 24)
    assert dense_walk(cfg, 3, 3, 1) == (2, 1, 1)
    assert dense_walk(cfg.replace(requant_lanes=0), 3, 3, 1) == (1, 1, 1)  # 12 steps do
    assert dense_walk(cfg.replace(requant_lanes=4), 3, 3, 1) == (3, 1, 1)  # 36
    assert dense_walk(cfg, 5, 5, 1) == (3, 1, 1)                           # long enough
    assert dense_walk(preset("default"), 3, 3, 1) == (2, 1, 1)      # 2 kernel rows a word
    w = np.arange(1, 17 * 9 + 1, dtype=np.int32).reshape(17, 1, 3, 3)
    dense = _dense_weights(cfg, w)
    assert dense.shape == (17, 24, 1, 1)
    assert not dense[:, 12:].any()
    assert sorted(dense[0, :12, 0, 0].tolist()) == [0, 0, 0] + list(range(1, 10))
    # A walk whose lanes' kernel rows would pass what the engine counts does not run dense.
    assert not dense_supported(cfg.replace(requant_lanes=1, max_kernel=3), cin=1, kh=3, kw=3)
    qnet = _net([_conv(1, 16, 3, pad=1), Flatten(), _linear(16 * 6 * 6, 2)], (1, 6, 6))
    prog = compile_network(qnet, cfg)
    assert (prog.layers[0].fields["dense"], prog.layers[0].fields["kh"]) == (1, 2)


def test_dense_raster_walk():
    """With ``dense_raster`` (`systolic.hw.isa.dense_raster`) a dense convolution whose words
    hold taps of one row that do not divide the kernel's width walks them in raster order:
    lenet5's second convolution (6->16 5x5 on 16 lanes, two taps of six channels a word) in
    13 words, not 5 rows of 3. On every dense kernel of both designs, every tap of every
    channel is in exactly one lane of one word, a lane's channel is its own (``l % cin``),
    each lane's tap in word ``j + 1`` is its tap in word ``j`` moved ``taps`` on in raster
    order (the engine's step), and a raster walk is shorter than the walk by rows."""
    from systolic.hw.isa import (
        dense_layout,
        dense_raster,
        dense_supported,
        dense_walk,
        dense_word_tap,
        drain_steps,
    )
    from systolic.sw.compiler import _dense_weights

    lenet, wide = preset("lenet"), preset("wide")
    assert dense_raster(lenet)
    assert not dense_raster(wide)
    assert not dense_raster(lenet.replace(dense_raster=False))
    assert dense_walk(lenet, 5, 5, 6) == (1, 1, 13)
    assert dense_walk(wide, 5, 5, 6) == (5, 3, 1)
    qnet = random_qnet("lenet5")
    for cfg, walk, words in ((lenet, (1, 1, 13), 13), (wide, (5, 3, 1), 15)):
        f = compile_network(qnet, cfg).layers[1].fields
        assert (f["kh"], f["kw"], f["cin_words"], f["w_tile_words"]) == (*walk, words * 16)
        assert (f["dkh"], f["dkw"], f["dcin"]) == (5, 5, 6)
    # The step at a lane's wrap: a row down, kw - taps pixels left, less the 1 of a word step.
    f = compile_network(qnet, lenet).layers[1].fields
    assert f["tap_row_step"] == 2 + 12 - 5 - 1
    rasters = 0
    for cfg in (lenet, wide, preset("default").replace(dense_raster=True)):
        for kh in range(1, cfg.max_kernel + 1):
            for kw in range(2, cfg.max_kernel + 1):
                for cin in range(1, cfg.cols // 2 + 1):
                    if not dense_supported(cfg, cin=cin, kh=kh, kw=kw):
                        continue
                    walk_h, walk_w, n = dense_walk(cfg, kh, kw, cin)
                    words = walk_h * walk_w * n
                    rows, taps = dense_layout(cfg, kw, cin)
                    seen = []
                    for j in range(words):
                        for lane in range(cfg.cols):
                            tap = dense_word_tap(cfg, kh, kw, cin, j, lane)
                            if tap is not None:
                                assert tap[2] == lane % cin
                                seen.append(tap)
                            if n > 1 and j + 1 < words and lane < taps * cin:
                                here = j * taps + lane // cin
                                ky, kx = divmod(here, kw)
                                kx += taps
                                ky, kx = (ky + 1, kx - kw) if kx >= kw else (ky, kx)
                                assert divmod(here + taps, kw) == (ky, kx)
                    expected = [(ky, kx, c) for ky in range(kh) for kx in range(kw)
                                for c in range(cin)]
                    assert sorted(seen) == expected, (cfg, kh, kw, cin)
                    assert words * cfg.cols >= drain_steps(cfg)
                    if n > 1:
                        rasters += 1
                        assert dense_raster(cfg)
                        assert (rows, kw % taps > 0) == (1, True)
                        assert words < (-(-kh // rows)) * (-(-kw // taps))
    assert rasters > 20
    # The weights: word j's lanes hold the taps in raster order, two of six channels a word.
    w = np.arange(1, 2 * 6 * 25 + 1, dtype=np.int32).reshape(2, 6, 5, 5)
    dense = _dense_weights(lenet, w)
    assert dense.shape == (2, 13 * 16, 1, 1)
    for j in range(13):
        for lane in range(16):
            t = j * 2 + lane // 6
            want = w[:, lane % 6, t // 5, t % 5] if lane < 12 and t < 25 else 0
            assert (dense[:, j * 16 + lane, 0, 0] == want).all()


class Upsample:
    """A layer type the accelerator has no engine for."""

    KIND = "upsample"

    def out_shape(self, shape):
        return shape


def test_unsupported_layer():
    qnet = _net([_conv(1, 2, 3), Upsample(), Flatten(), _linear(2 * 2 * 2, 2)], (1, 4, 4))
    with pytest.raises(FitError, match=r"^layer 1 \(upsample\): layer type must be Conv, "
                                       r"Linear, Pool, GlobalAvgPool, Add, Branch or Flatten, "
                                       r"not Upsample$"):
        compile_network(qnet, preset("default"))


def test_perfmodel_formula():
    """An 8x8 conv 16->16 3x3 on an 8x8 map: 2357 cycles (2304 feeding the array, both channel
    tiles back to back; 52 around them, five of them the memories' and the fill address's
    registers, three the second weight register, the drain's second selection stage and the
    PEs' second product register, eight the requantizer's; one for the core's descriptor
    register).
    tests/test_perf_rtl.py checks the model against the RTL's cycle counter."""
    cfg = preset("default")
    fields = describe_conv(cfg, cin=16, h=8, w=8, cout=16, kh=3, kw=3, pad=1)
    assert perfmodel.predict_cycles(cfg, fields) == 2357
    assert perfmodel.layer_macs(fields, 16, 16) == 64 * 16 * 16 * 9
    assert perfmodel.utilization(cfg, 147456, 2390) == 147456 / (2390 * 64)


def test_fully_connected_rows_of_one_image():
    """lenet5 on the wide preset with ``fc_rows`` 4: in a program of one image its 256->120 (8
    channel tiles) and 120->84 (6) run row by row (`describe_fc_rows`), 4 tiles a run, each
    run's tile r from a stripe in bank r of the weight memory, skewed but for row 0's; in a
    program of a batch they are fully connected layers as ever, and so are its smaller
    batches (one weight image a program). Only the layers' words go to the device
    (`Program.weight_spans`); the performance model's cycles follow."""
    from systolic.hw.isa import fc_bank_depth
    cfg = preset("wide").replace(fc_rows=4)
    depth = fc_bank_depth(cfg)
    assert (cfg.fc_rows, depth) == (4, 2048)
    qnet = random_qnet("lenet5")
    one, eight = compile_network(qnet, cfg), compile_network(qnet, cfg, batch=8)
    fc1, fc2, fc3 = one.layers[2:]
    assert [(e["fc_rows"], e["cin_words"], e["out_w"], e["out_base"] - fc1.out_base,
             e["p_base"] - fc1.entries[0]["p_base"]) for e in fc1.entries] == [
        (1, 17, 4, 0, 0), (1, 17, 4, 4, 4 * cfg.rq_groups)]
    assert [e["out_w"] for e in fc2.entries] == [4, 2]
    assert "fc_rows" not in fc3.fields
    layer = qnet.layers[fc1.index]
    banks = layout.fc_rows_weight_words(cfg, layer.w, fc1.in_shape)
    assert [len(b) for b in banks] == [256 + 32] * 8
    for e, run in zip(fc1.entries, (banks[:4], banks[4:]), strict=True):
        for r, bank in enumerate(run):
            at = r * depth + e["w_base"]
            assert one.weights[at:at + len(bank)] == bank
    # A run's row 0 has its tile's words as they are; row r's lane c, c words later.
    flat = layout.linear_weight_words(cfg, layer.w, fc1.in_shape)
    assert banks[4][:256] == flat[4 * 256:5 * 256]
    assert not any(banks[4][256:])
    lanes = [np.frombuffer(v.to_bytes(16, "little"), np.int8) for v in banks[5]]
    tile5 = [np.frombuffer(v.to_bytes(16, "little"), np.int8) for v in flat[5 * 256:6 * 256]]
    assert all(lanes[a][c] == (tile5[a - c][c] if 0 <= a - c < 256 else 0)
               for a in range(len(lanes)) for c in range(16))
    loads = [a for m, a, _ in one.loads() if m == Mem.WEIGHT]
    assert len(loads) == sum(hi - lo for lo, hi in one.weight_spans) < len(one.weights)
    assert [perfmodel.predict_layer(cfg, lay) for lay in one.layers[2:]] == [682, 426, 165]
    # A batch's program, and its smaller batches: fully connected layers, one weight image.
    assert not any(lay.fields.get("fc_rows") for lay in eight.layers)
    assert eight.with_batch(1).weights == eight.weights
    assert not any(lay.fields.get("fc_rows") for lay in eight.with_batch(1).layers)
    # Without the knob, or asked not to, the layers are fully connected layers as ever.
    for prog in (compile_network(qnet, cfg.replace(fc_rows=0)),
                 compile_network(qnet, cfg, fc_rows=False)):
        assert not any(lay.fields.get("fc_rows") for lay in prog.layers)
        assert prog.weight_spans == [(0, len(prog.weights))]


def test_fully_connected_rows_give_way_when_the_weights_would_not_fit():
    """With a quarter of the weight memory (banks of 512 words) 256->120's runs (2 x 288
    words a bank) do not fit a bank, and its 2,048 words as a fully connected layer do not
    fit beside 120->84's stripes: the network compiles without stripes, and says that its
    weights do not fit as it would without them (not a row-by-row error of its own)."""
    cfg = preset("wide").replace(weight_depth=2048, fc_rows=4)
    qnet = random_qnet("lenet5")
    with pytest.raises(FitError) as striped:
        compile_network(qnet, cfg)
    with pytest.raises(FitError) as plain:
        compile_network(qnet, cfg, fc_rows=False)
    assert type(striped.value) is FitError
    assert str(striped.value) == str(plain.value)
    assert str(plain.value).startswith("layer 5 (linear 256->120): weights must fit "
                                       "weight_depth 2048 words")
    roomy = cfg.replace(weight_depth=4096)
    assert [lay.fields.get("fc_rows") for lay in compile_network(qnet, roomy).layers[2:]] == [
        1, 1, None]


@pytest.mark.parametrize(("changes", "what"), [
    ({"rows": 8, "cols": 8, "fc_rows": 3}, "a power of two from 2 to rows 8, not 3"),
    ({"rows": 2, "cols": 8, "fc_rows": 4}, "a power of two from 2 to rows 2, not 4"),
    ({"rows": 2, "cols": 4, "fc_rows": 2}, "at least 8 even columns, not 4"),
    ({"target": "ice40", "dense_conv": False, "fc_rows": 2},
     "the memories in column slices, not the ice40 target's"),
])
def test_fully_connected_rows_need_a_banked_weight_memory(changes, what):
    with pytest.raises(SystolicError, match=rf"^fc_rows \(weight banks, rows a fully connected "
                                            rf"layer of one image runs on\) must be 0 or take "
                                            rf"{what}; set fc_rows=0$"):
        AcceleratorConfig(**changes)
