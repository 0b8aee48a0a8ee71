"""The script here runs under TensorFlow, by hand: pytest does not collect it."""

collect_ignore = ["make_fixtures.py"]
