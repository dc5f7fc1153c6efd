"""The HAProxy configuration `orchestrator fleet haproxy` prints (HAProxy itself checks it in
test_haproxy_real.py)."""

from __future__ import annotations

from orchestrator.fleet.haproxy import Node, Settings, render

NODES = [Node("127.0.0.2", 8080, 8081), Node("10.0.0.3", 9000, 9001)]


def test_each_model_tries_loaded_then_fits_then_any_and_everything_else_goes_anywhere() -> None:
    text = render(NODES, ["coder", 'odd "name'], Settings(bind="0.0.0.0:80", stats_socket="/run/h.sock"))
    lines = text.splitlines()
    routing = [line.strip() for line in lines if line.strip().startswith("use_backend")]
    assert routing[:3] == [
        'use_backend m0_loaded if { var(txn.model) -m str "coder" } { nbsrv(m0_loaded) gt 0 }',
        'use_backend m0_fits if { var(txn.model) -m str "coder" } { nbsrv(m0_fits) gt 0 }',
        'use_backend m0_any if { var(txn.model) -m str "coder" } { nbsrv(m0_any) gt 0 }',
    ]
    assert 'var(txn.model) -m str "odd \\"name"' in routing[3]
    assert "    default_backend every_daemon" in lines and "    bind 0.0.0.0:80" in lines
    assert "    stats socket /run/h.sock mode 600 level admin" in lines
    assert (
        "    option http-no-delay  # each streamed token goes out as it comes, not merged with the next"
        in lines
    )
    start = lines.index("backend m0_fits  # coder: fits")
    assert lines[start + 4 : start + 6] == [
        '    server d1 127.0.0.2:8080 agent-port 8081 agent-send "fits coder\\n"',
        '    server d2 10.0.0.3:9000 agent-port 9001 agent-send "fits coder\\n"',
    ]
    fallback = lines[lines.index("backend every_daemon") :]
    assert "    server d2 10.0.0.3:9000 no-agent-check" in fallback


def test_without_a_stats_socket_there_is_none() -> None:
    assert "stats socket" not in render(NODES, ["coder"])
