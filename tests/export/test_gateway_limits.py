"""The gateway's body limits follow each model's documented bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.errors import ExportError
from export.gateway.limits import (
    JSON_SEPARATOR_BYTES,
    OVERHEAD_BYTES,
    RequestLimits,
    model_request_limits,
    repository_request_limits,
)
from export.gateway.nginx import NginxSite, nginx_config
from export.triton.config import build_model_config, write_model_config


def test_limits_count_exclusions_and_setting_when_model_is_ivf_retrieve():
    config = build_model_config(name="r", graph_kind="retrieve", id_kind="int", k=10,
                                max_batch_size=4, max_exclude=100, index="ivf")
    limits = model_request_limits(config)
    assert limits.grpc_bytes == OVERHEAD_BYTES + 4 * 101 * 8 + 4 * 8
    assert limits.http_bytes == OVERHEAD_BYTES + (4 * 101 + 4) * (20 + JSON_SEPARATOR_BYTES)


def test_limits_grow_with_id_length_when_ids_are_strings():
    config = build_model_config(name="s", graph_kind="rerank", id_kind="str", k=10,
                                max_batch_size=2, max_candidates=10)
    short, long = (model_request_limits(config, max_id_bytes=n) for n in (8, 80))
    assert short.grpc_bytes == OVERHEAD_BYTES + 2 * 11 * (4 + 8)
    assert long.http_bytes - short.http_bytes == 2 * 11 * 2 * 72


def test_repository_limits_take_the_largest_model_when_several_served(tmp_path: Path):
    small = build_model_config(name="a", graph_kind="rerank", id_kind="int", k=5,
                               max_batch_size=2, max_candidates=10)
    large = build_model_config(name="b", graph_kind="rerank", id_kind="int", k=5,
                               max_batch_size=8, max_candidates=500)
    for name, config in (("a", small), ("b", large)):
        (tmp_path / name).mkdir()
        write_model_config(tmp_path / name, config)
    assert repository_request_limits(tmp_path) == model_request_limits(large)


def test_repository_limits_refuse_when_repository_holds_no_model(tmp_path: Path):
    with pytest.raises(ExportError, match="No model"):
        repository_request_limits(tmp_path)


def test_nginx_config_puts_each_limit_on_its_protocol_when_limits_given():
    site = NginxSite(grpc=["127.0.0.1:1"], http=["127.0.0.1:2"], grpc_listen="0.0.0.0:81",
                     http_listen="0.0.0.0:82", limits=RequestLimits(111_111, 222_222))
    text = nginx_config(Path("/p"), site)
    grpc_block = text[text.index("listen 0.0.0.0:81 http2;"):text.index("listen 0.0.0.0:82;")]
    http_block = text[text.index("listen 0.0.0.0:82;"):]
    assert "client_max_body_size 111111;" in grpc_block
    assert "client_max_body_size 222222;" in http_block
    assert "client_max_body_size" not in nginx_config(Path("/p"), NginxSite(
        grpc=["a:1"], http=["a:2"], grpc_listen="a:3", http_listen="a:4"))


def test_limits_cli_prints_json_and_directives_when_repository_has_models(tmp_path, capsys):
    import json

    from export.cli import main

    config = build_model_config(name="a", graph_kind="rerank", id_kind="int", k=5,
                                max_batch_size=2, max_candidates=10)
    (tmp_path / "a").mkdir()
    write_model_config(tmp_path / "a", config)
    assert main(["limits", "--repo", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = model_request_limits(config)
    assert json.loads(out[0])["grpc_bytes"] == expected.grpc_bytes
    assert f"client_max_body_size {expected.http_bytes};" in out[2]


def test_limits_cli_exits_one_naming_repository_when_it_is_empty(tmp_path, capsys):
    from export.cli import main

    assert main(["limits", "--repo", str(tmp_path)]) == 1
    assert str(tmp_path) in capsys.readouterr().err
