"""The scripts here run under TensorFlow, by hand: pytest does not collect them."""

collect_ignore = ["make_fixtures.py", "check_tf_reads_jscope.py"]
