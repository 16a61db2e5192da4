"""The import graph is the architecture (DESIGN.md, STYLE.md): core at the bottom imports none of
the boxes, contracts only core, the stream never imports the API, the CLI is the top, and no
package or module imports itself back through a cycle."""

from bench.imports import PACKAGES, cycles, graph, package_graph


def test_packages_import_only_downward_and_never_in_a_cycle():
    packages = package_graph(graph())
    assert packages["core"] == set()
    assert packages["contracts"] <= {"core"}
    assert "api" not in packages["streaming"] and "streaming" not in packages["api"]
    assert all("gpucost" not in packages[p] for p in PACKAGES if p != "gpucost")
    assert cycles(packages) == []


def test_no_module_cycles():
    assert cycles(graph()) == []
