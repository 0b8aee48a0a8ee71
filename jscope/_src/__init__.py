"""Private implementation of jscope; import from `jscope` instead."""
