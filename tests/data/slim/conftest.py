"""The scripts here run under TensorFlow, by hand: pytest does not collect them."""

collect_ignore = ["make_fixtures.py"]
