import sys

from kalm_core.python_docs import fingerprint, harvest, is_signature, split_docstring

PKG = '''
"""A tiny package for tests.

It has a module docstring long enough to be a pair of its own, with details.
"""


def add(a, b):
    """Add two numbers and return the sum.

    Both arguments may be ints or floats; the result has the wider type of the two.
    """


def sig(x, y=None):
    """sig(x, y=None) -> int

    A summary that is only a call signature is not a query, so this is skipped.
    """


def _private():
    """Private helpers are skipped.

    Even when their documentation is long enough to make a pair.
    """


class Thing:
    """A thing that holds other things.

    Things nest, and every thing knows the things that it holds inside it.
    """

    def grow(self):
        """Grow the thing by one more item.

        Growing appends an item at the end and returns the new number of items.
        """
'''


def test_signature_summaries_are_not_queries():
    assert is_signature("any(self, axis=None, out=None)")
    assert is_signature("torch.cat(tensors, dim=0) -> Tensor")
    assert not is_signature("Concatenate tensors along a dimension.")
    assert split_docstring("f(x)\n\nDocumentation of f that is long enough to count.") is None
    assert split_docstring("Only a summary.") is None
    assert split_docstring("Sum the values.\n\n    Returns the sum of all values in the array.") == (
        "Sum the values.", "Returns the sum of all values in the array.")


def test_harvest_parses_without_importing(tmp_path, monkeypatch):
    pkg = tmp_path / "tinypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PKG + "\nraise RuntimeError('importing is not allowed')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    df = harvest(["tinypkg"])
    names = set(df["record_id"].to_list())
    assert names == {"tinypkg", "tinypkg.add", "tinypkg.Thing", "tinypkg.Thing.grow"}
    row = df.filter(df["record_id"] == "tinypkg.add").row(0, named=True)
    assert row["query"] == "Add two numbers and return the sum."
    assert row["positives"][0].startswith("Both arguments") and row["negatives"] == []
    assert sorted(df["ordinal"].to_list()) == [1, 2, 3, 4]
    assert "tinypkg" not in sys.modules
    assert harvest(["tinypkg"]).equals(df)  # deterministic
    assert fingerprint(["tinypkg"]) == fingerprint(["tinypkg"])
