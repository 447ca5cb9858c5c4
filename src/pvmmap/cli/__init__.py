"""The pvmmap command (`pvmmap` and `python -m pvmmap`).

Exit status: 0 done, 1 the operation failed (the OSError pvmmap raised, one
line), 2 a mistake in the command line (one line after the usage).  No
command prints a traceback for either."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, List, Optional, Sequence

import pvmmap
from pvmmap.cli import check, clone, dump, info, maps
from pvmmap.cli._common import UsageError, error_text, pid_arg
from pvmmap._errors import ConfigError

Command = Callable[[argparse.Namespace], int]

_RANGE_HELP = ("ADDR LEN, ADDR:LEN or START-END (ADDR hex with 0x, or decimal; "
               "START-END in hex, as maps prints it; LEN in bytes, K, M or G), or "
               "a region name from maps ([heap], [stack], a path): all of it")


def _demo(args: argparse.Namespace) -> int:
    from pvmmap._demo import demo
    return demo()


def _clone_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=pvmmap.METHODS, default="auto",
                   help="auto: the native call where the kernel has it, else the "
                   "faithful emulation per kind; native: the kernel call or "
                   "fail; copy: a private snapshot of every kind (default auto)")
    p.add_argument("--freeze", action="store_true",
                   help="stop the source's threads for the copy, so that it is "
                   "one instant")
    p.add_argument("--allow-copy", action="store_true",
                   help="copy shared memory that may not be mapped shared, "
                   "instead of failing (the copy is not shared)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pvmmap", description="Clone another process's memory into yours.",
        epilog="Exit status: 0 done, 1 the operation failed, 2 a usage mistake.")
    parser.add_argument("--version", action="version",
                        version=f"pvmmap {pvmmap.__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true",
                          help="print machine-readable JSON instead of text")

    def command(name: str, run: Command, help: str, aliases: Sequence[str] = (),
                data: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, aliases=list(aliases),
                           parents=[json_opt] if data else [])
        p.set_defaults(run=run, parser=p)
        return p

    command("info", info.run, "what this kernel and these privileges allow, why, "
            "and how to get the rest", aliases=["features"])

    p = command("maps", maps.run, "the regions of a process: kind, size, RSS, "
                "offset, device, inode, path")
    p.add_argument("pid", type=pid_arg, metavar="PID", help="the process")
    p.add_argument("--kind", action="append", choices=pvmmap.KINDS, metavar="KIND",
                   help="only regions of this kind (repeatable): "
                   + ", ".join(pvmmap.KINDS))
    p.add_argument("--path", metavar="SUBSTR",
                   help="only regions whose path contains SUBSTR")

    p = command("check", check.run, "whether clone would succeed from PID, and "
                "how it would map each VMA (exit 1 if a given RANGE would fail)")
    p.add_argument("pid", type=pid_arg, metavar="PID", help="the source process")
    p.add_argument("range", nargs="?", metavar="RANGE",
                   help=_RANGE_HELP + " (default: every mapped range)")
    p.add_argument("length", nargs="?", metavar="LEN",
                   help="the length, when RANGE is an address")
    _clone_options(p)

    p = command("clone", clone.run, "clone a range of PID and write its bytes: "
                "to FILE, else a hexdump on a terminal, raw bytes to a pipe")
    p.add_argument("pid", type=pid_arg, metavar="PID", help="the source process")
    p.add_argument("addr", metavar="ADDR", help=_RANGE_HELP)
    p.add_argument("length", nargs="?", metavar="LEN",
                   help="the length in bytes (0x hex, or K, M, G); not needed "
                   "with ADDR:LEN, START-END or a region name")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the bytes to FILE ('-': stdout)")
    _clone_options(p)

    p = command("dump", dump.run, "write the memory of PID as CRIU images in DIR")
    p.add_argument("pid", type=pid_arg, metavar="PID", help="the source process")
    p.add_argument("directory", metavar="DIR", help="where the images go")
    p.add_argument("--page-server", type=dump.page_server_arg,
                   metavar="HOST:PORT",
                   help="send the pages to a running criu page-server instead")
    p.add_argument("--no-freeze", dest="freeze", action="store_false",
                   help="do not stop the source while dumping (not one instant)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bar (there is none when stderr is not a "
                   "terminal)")

    command("demo", _demo, "clone every kind of memory of a sample process and "
            "check the bytes", data=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except UsageError as e:
        args.parser.error(str(e))           # exits 2
    except ConfigError as e:
        # a bad PVMMAP_* variable: the command line was fine, the
        # environment is not; one line, no traceback, exit 2 as for usage
        print(f"pvmmap {args.cmd}: {e}", file=sys.stderr)
        return 2
    except (OSError, NotImplementedError) as e:
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return 1
        print(f"pvmmap {args.cmd}: {error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pvmmap {args.cmd}: interrupted", file=sys.stderr)
        return 130
    return 2


def _quiet_stdout() -> None:
    """After EPIPE (`pvmmap clone ... | head`): stdout points to /dev/null,
    so the interpreter's final flush does not complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
