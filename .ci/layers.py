#!/usr/bin/env python3
"""The module graph of src/ and the rules it must keep (CI fails when it does not):

- the top-level modules form no import cycle, and each imports only its own layer or the
  layers below it (LAYERS, bottom first);
- a service folder (opsworks/, ssm/) imports no other service, and the files inside it form no
  cycle (a module and its own children aside).

An import is any `crate::<module>` path in a file's code (comments aside), tests included. Prints the graph, one line per
module with what it imports, and the violations; exits 1 if there are any.

    python3 .ci/layers.py [src]
"""

import re
import sys
from pathlib import Path

# Bottom first. A module may import its own layer (without cycles) and those below.
LAYERS = [
    ("base", ["failpoint", "resource", "conditions", "backoff", "cache", "batch", "metrics", "budget",
              "telemetry", "http", "aws", "sshkey", "sshcert", "ssh", "slots", "watches", "leader",
              "tenancy"]),
    ("context", ["context"]),
    ("shared machinery", ["conflict", "steps"]),
    ("services", ["opsworks", "ssm"]),
    ("top", ["services", "pipeline", "audit", "controller", "cli", "main", "third_service"]),
]
SERVICES = ["opsworks", "ssm"]

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)((?:::[a-z_][a-z0-9_]*)*)")
SUPER = re.compile(r"\bsuper::([a-z_][a-z0-9_]*)")


def top_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    return rel.parts[0].removesuffix(".rs")


def file_module(src: Path, file: Path) -> tuple:
    """The module path of a file, as a tuple of names (`steps/mod.rs` is ("steps",))."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return tuple(parts)


def cycles(graph: dict) -> list:
    """Every strongly connected component of more than one node (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    layer_of = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
    graph, files = {}, {}
    problems = []
    for file in sorted(src.rglob("*.rs")):
        # Code only: a doc comment may name any module.
        text = "\n".join(
            line for line in file.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        me = top_of(src, file)
        if me == "lib":
            # The crate root declares every module and re-exports the library's face.
            continue
        if me not in layer_of:
            problems.append(f"{file}: module {me} is in no layer of .ci/layers.py")
            continue
        module = file_module(src, file)
        for m in PATH.finditer(text):
            target = m.group(1)
            if target in layer_of and target != me:
                graph.setdefault(me, set()).add(target)
            if me in SERVICES and target == me:
                rest = [p for p in m.group(2).split("::") if p]
                if rest:
                    files.setdefault(module, set()).add((me, rest[0]))
        if me in SERVICES and len(module) > 1:
            for m in SUPER.finditer(text):
                files.setdefault(module, set()).add((me, m.group(1)))
    for me, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of[target] > layer_of[me]:
                problems.append(
                    f"{me} ({LAYERS[layer_of[me]][0]}) imports {target} "
                    f"({LAYERS[layer_of[target]][0]}): upward"
                )
            if me in SERVICES and target in SERVICES:
                problems.append(f"service {me} imports service {target}")
    for component in cycles(graph):
        problems.append("import cycle among top-level modules: " + " -> ".join(component))
    for service in SERVICES:
        inner = {
            m[1]: {t[1] for t in targets if t[1] != m[1] and t[1] in {n[1] for n in files if len(n) > 1}}
            for m, targets in files.items()
            if len(m) > 1 and m[0] == service
        }
        for component in cycles(inner):
            problems.append(f"import cycle inside {service}/: " + " -> ".join(component))

    for i, (name, mods) in enumerate(LAYERS):
        print(f"{name}:")
        for mod in mods:
            if mod in graph:
                print(f"  {mod} -> {' '.join(sorted(graph[mod]))}")
            elif (src / f"{mod}.rs").exists() or (src / mod).is_dir():
                print(f"  {mod}")
    for problem in problems:
        print(f"layers: {problem}", file=sys.stderr)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
