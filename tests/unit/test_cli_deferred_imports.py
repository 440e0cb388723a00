"""`kxr` defers aiohttp (services/cli/deferred.py, from main.run): a command that talks NATS never
loads it; ws:// and the dashboard still get it whole on first use. Each check runs in a fresh
interpreter (this one has aiohttp loaded), deferring as `kxr` does before anything else."""

from __future__ import annotations

import subprocess
import sys

DEFER = "import sys, services.cli.deferred as d; d.defer_import('aiohttp')\n"


def fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", DEFER + code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_nats_command_path_never_loads_aiohttp() -> None:
    out = fresh(
        "import services.cli.main, services.jetstream.log_reads, services.jetstream.client, nats\n"
        "import services.reads.history, services.reads.watch\n"
        "print(type(sys.modules['aiohttp']).__name__, 'aiohttp.client' in sys.modules)"
    )
    assert out == "_Deferred False"


def test_aiohttp_loads_whole_on_first_use() -> None:
    out = fresh(
        "import services.cli.main, nats.aio.transport as t\n"
        "from aiohttp import web\n"
        "print(web.Application.__module__, type(sys.modules['aiohttp']).__name__, t.aiohttp.WSMsgType.BINARY.name)"
    )
    assert out == "aiohttp.web_app module BINARY"
    out = fresh(
        "import services.cli.main, nats.aio.transport as t\n"
        "print(t.aiohttp.ClientSession.__name__, type(sys.modules['aiohttp']).__name__)"
    )
    assert out == "ClientSession module"


def test_without_the_deferral_importing_the_cli_changes_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, services.cli.main; print('aiohttp' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_kxr_starts_with_the_collector_off_and_the_first_nats_command_turns_it_on() -> None:
    """Start-up time: `kxr` imports a command's modules with the cyclic GC off (main.run), and
    run_async, before any NATS work, freezes what was loaded and turns the collector back on. A
    command that ends without run_async (`--version`, a usage error) turns it back on as it ends:
    whatever runs next in the process (a test) finds it on."""
    code = (
        "import gc, sys, services.cli.main as m, services.cli.common as c\n"
        "sys.argv = ['kxr', '--version']\n"
        "try:\n    m.run()\nexcept SystemExit:\n    pass\n"
        "print(gc.isenabled(), c.collector_paused)\n"
        "gc.disable(); c.collector_paused = True\n"  # as run() leaves it while a command's modules load
        "async def probe():\n    return gc.isenabled()\n"
        "print(c.run_async(probe()), gc.get_freeze_count() > 0, c.collector_paused)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-3:-1] == ["True False", "True True False"], done.stdout
