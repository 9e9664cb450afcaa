"""``docs/protocol.md``'s tables are generated from the definitions the gateware uses
(`systolic.sw.protocol_doc`): the document must be current, and the generator must refuse
what it cannot document."""

import re

import pytest
from systolic.hw.config import PRESETS
from systolic.hw.isa import IDENTIFY_FIELDS, Error, Reply, Request, layer_layout
from systolic.sw import protocol_doc
from systolic.sw.errors import SystolicError


def test_the_document_is_current():
    assert protocol_doc.check(), (
        "docs/protocol.md's generated tables are stale: run python -m systolic.sw.protocol_doc")


def test_every_definition_is_in_the_document():
    text = protocol_doc.DOC.read_text()
    for kind in (*Request, *Reply):
        assert f"| 0x{kind.value:02X} | {kind.name} |" in text
    for e in Error:
        assert f"| {e.value} | {e.name} |" in text
    for f in IDENTIFY_FIELDS:
        assert f"| `{f.name}` |" in text
    for name, _ in layer_layout(PRESETS["default"]):
        assert re.search(rf"^\| `{name}` \| [^|]+ \|", text, re.M), name


def test_descriptor_widths_hold_for_every_configuration():
    """Each width expression, evaluated with IDENTITY-derived widths, is the layout's."""
    for cfg in protocol_doc._PROBES:
        names = {name: f(cfg) for name, (_, f) in protocol_doc.WIDTHS.items()}
        layout = dict(layer_layout(cfg))
        for name, width, *_ in protocol_doc.descriptor_fields():
            only = {"dense": "dense_conv", "dkh": "dense_conv", "dkw": "dense_conv",
                    "dcin": "dense_conv", "pool": "fused_pool", "pairs": "fused_pool",
                    "halves": "fused_pool", "vpairs": "fused_pool",
                    "fc_rows": "fc_rows"}.get(name)
            if only:                                        # (only with that knob)
                assert (name in layout) == bool(getattr(cfg, only)), (name, cfg)
                if name not in layout:
                    continue
            assert eval(width, {}, names) == layout[name].width, (name, cfg)


def test_a_missing_marker_is_named():
    with pytest.raises(SystolicError, match=r"^The protocol document must hold the markers "
                                            r"'<!-- generated: requests .*' and "
                                            r"'<!-- end generated: requests -->', in that order; "
                                            r"it does not$"):
        protocol_doc.render("# nothing here\n")


def test_an_undescribed_request_is_refused(monkeypatch):
    monkeypatch.delitem(protocol_doc._REQUESTS, "IDENTIFY")
    with pytest.raises(SystolicError, match=r"^Request IDENTIFY must be described in "
                                            r"systolic.sw.protocol_doc before the document is "
                                            r"generated$"):
        protocol_doc.tables()


def test_check_on_the_command_line(tmp_path, capsys):
    doc = tmp_path / "protocol.md"
    doc.write_text(protocol_doc.DOC.read_text().replace("| 0x06 | IDENTIFY |", "| 0x07 | X |"))
    assert protocol_doc.main([str(doc), "--check"]) == 1
    assert "the generated tables are stale" in capsys.readouterr().err
    assert protocol_doc.main([str(doc)]) == 0
    assert doc.read_text() == protocol_doc.DOC.read_text()
