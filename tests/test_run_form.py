"""The run form generated from papermill's inspection, without a platform: typed fields, the
defaults and help, values typed in a page or a widget becoming a run request's parameters
(only those that differ from the notebook's defaults), each problem naming its field; and the
run pages' templates rendering it escaped, with the error next to its field."""

from __future__ import annotations

import pytest
from jinja2 import Environment, FileSystemLoader, select_autoescape

from marketplace_ext.app import HERE
from marketplace_ext.errors import InvalidField
from marketplace_ext.handlers.base import MarketError
from marketplace_ext.reprs import Product, Run, RunList, Statement
from marketplace_ext.run_form import form_fields, parse_values

SPEC = {
    "label": {"inferred_type_name": "str", "default": '"hello"', "help": "the <b>text</b>"},
    "repeat": {"inferred_type_name": "int", "default": "2", "help": "how many times"},
    "scale": {"inferred_type_name": "float", "default": "1.5", "help": ""},
    "shout": {"inferred_type_name": "bool", "default": "False", "help": "capitals"},
    "tags": {"inferred_type_name": "list[str]", "default": "[]", "help": ""},
    "limit": {"inferred_type_name": "Optional[int]", "default": "None", "help": ""},
    "anything": {"inferred_type_name": "None", "default": "3", "help": ""},
    "start": {"inferred_type_name": "str", "default": "str(date.today())", "help": ""},
    "input_path": {"inferred_type_name": "str", "default": '""', "help": ""},
    "unit": {"inferred_type_name": "str", "default": '""', "help": ""},
}


def test_fields_are_typed_with_defaults_and_help_and_no_context_parameters():
    fields = {f.name: f for f in form_fields(SPEC)}
    assert list(fields) == ["label", "repeat", "scale", "shout", "tags", "limit", "anything",
                            "start"]
    assert [fields[n].kind for n in fields] == ["str", "int", "float", "bool", "json", "int",
                                                "any", "str"]
    assert fields["label"].default_text == "hello" and fields["label"].help == "the <b>text</b>"
    assert fields["limit"].optional and fields["limit"].default_text == ""
    assert not fields["start"].has_default and fields["start"].default_text == "str(date.today())"
    assert fields["repeat"].key == "parameters.repeat"


def test_values_become_parameters_and_defaults_are_left_out():
    page = {"parameters.label": "hello", "parameters.repeat": "3", "parameters.scale": "1.5",
            "parameters.tags": '["a"]', "parameters.limit": "", "parameters.anything": "x y",
            "parameters.start": "str(date.today())"}
    assert parse_values(SPEC, page) == {"repeat": 3, "tags": ["a"], "anything": "x y"}
    widget = {"parameters.shout": True, "parameters.scale": 2.0, "parameters.limit": "7"}
    assert parse_values(SPEC, widget) == {"shout": True, "scale": 2.0, "limit": 7}
    assert parse_values(SPEC, {"parameters.shout": "on"}) == {"shout": True}


@pytest.mark.parametrize("values, field, words", [
    ({"parameters.repeat": "two"}, "parameters.repeat", "whole number"),
    ({"parameters.repeat": ""}, "parameters.repeat", "needs a value"),
    ({"parameters.scale": "nan"}, "parameters.scale", "finite"),
    ({"parameters.tags": "[1]"}, "parameters.tags", "list[str]"),
    ({"parameters.tags": "oops"}, "parameters.tags", "must be JSON"),
])
def test_a_bad_value_names_its_field(values, field, words):
    with pytest.raises(InvalidField) as e:
        parse_values(SPEC, values)
    assert e.value.field == field and words in e.value.message


class _Caller:
    name, unit, is_operator = "subscriber-a", "a", False


def _env() -> Environment:
    return Environment(loader=FileSystemLoader(str(HERE / "templates")),
                       autoescape=select_autoescape(default=True, default_for_string=True))


def _namespace(**ns) -> dict:
    base = {"prefix": "/services/marketplace/", "hub_prefix": "/hub/", "caller": _Caller(),
            "xsrf": "2|tok", "nav": "runs", "errors": {}, "form": {}}
    base.update(ns)
    return base


def test_the_form_page_shows_the_error_next_to_its_field_and_keeps_the_values():
    error: MarketError = InvalidField("tags must be JSON", "parameters.tags")
    page = _env().get_template("run_form.html").render(**_namespace(
        errors={error.field: error.message},
        form={"parameters.label": "<script>typed</script>", "data": "upload"},
        product={"name": "p-1", "title": "P <one>", "unit": "b"}, version="0.1.0",
        requested_version="", spec=SPEC, fields=form_fields(SPEC),
        access={"state": "entitled", "uses_left": 1, "valid_until": None},
        default_timeout=600, max_timeout=3600, max_file_mb=64))
    assert 'action="/services/marketplace/products/p-1/run?_xsrf=2%7Ctok"' in page
    assert ('<p class="field-error" id="error-parameters.tags" role="alert">tags must be JSON'
            in page)
    assert 'aria-describedby="help-parameters.label type-parameters.label"' in page
    assert "&lt;script&gt;typed&lt;/script&gt;" in page and "<script>typed" not in page
    assert "the &lt;b&gt;text&lt;/b&gt;" in page  # a comment is text, not HTML
    assert 'id="data-upload" name="data" value="upload" checked' in page
    assert 'name="parameters.unit"' not in page and "1 use left" in page


def test_the_run_page_frames_the_output_sandboxed_and_offers_cancel_while_running():
    run = {"id": 7, "product": "p", "version": "0.1.0", "status": "running", "user": "u",
           "parameters": {"a": "<b>"}, "progress": {"cells_done": 2, "cells_total": 5},
           "error": None, "created_at": "2026-12-01T10:00:00Z", "started_at": None,
           "finished_at": None, "output_html": "/services/marketplace/api/runs/7/output.html",
           "outputs_withheld": False, "log_index": None,
           "artifacts": {"outputs/r.json": {"sha256": "ab", "url": "/a"}}}
    page = _env().get_template("run.html").render(**_namespace(run=run, final=False))
    assert 'sandbox title="Output of run 7"' in page and "allow-same-origin" not in page
    assert 'action="/services/marketplace/runs/7?_xsrf=2%7Ctok"' in page
    assert 'value="2"' in page and "2 of 5 cells done" in page
    assert "\\u003cb\\u003e" in page and '"<b>"' not in page  # tojson escapes markup
    done = _env().get_template("run.html").render(**_namespace(
        run={**run, "status": "succeeded"}, final=True))
    assert "Cancel the run" not in done


def test_rich_reprs_escape_and_stay_plain_json():
    import json

    run = Run({"id": 3, "product": "<p>", "status": "failed", "error": "<boom>",
               "progress": {"cells_done": 1, "cells_total": 4}})
    assert json.loads(json.dumps(run))["product"] == "<p>"
    shown = run._repr_html_()
    assert "Run #3: &lt;p&gt;" in shown and "&lt;boom&gt;" in shown and "1 / 4 cells" in shown
    assert "<td" in RunList({"runs": [run], "total": 1, "offset": 0})._repr_html_()
    assert "&lt;i&gt;" in Product({"title": "<i>", "plans": []})._repr_html_()
    statement = Statement({"account": "unit:a", "balance": "90.00", "total": 1,
                           "transfers": [{"amount": "-10.00", "kind": "order"}]})
    assert "balance <b>90.00</b>" in statement._repr_html_()
