"""slim.arg_scope and add_arg_scope: tf-slim's nesting rules (DESIGN §5).

A hypothesis test plays random nests of ``arg_scope`` (lists of functions with
keyword arguments, and re-entered scope dicts) against a small model of
tf-slim's rules: the innermost setting of an argument wins, a re-entered dict
replaces the scope in force instead of merging with it, only the functions
listed are affected, and a call's own arguments win over every scope.
"""

from __future__ import annotations

import contextlib
import inspect
import pickle
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import jscope.errors as jse
import jscope.slim as slim


@slim.add_arg_scope
def f(x=None, a=0, b=0, c=0):
    return {"a": a, "b": b, "c": c}


@slim.add_arg_scope
def g(x=None, a=0, b=0, c=0):
    return {"a": a, "b": b, "c": c}


def h(x=None, a=0, b=0, c=0):  # not decorated
    return {"a": a, "b": b, "c": c}


OPS = {"f": f, "g": g}
ARGS = ("a", "b", "c")

# A program: a list of steps, each either ("push", ops, kwargs) or ("reuse", i)
# re-entering the dict yielded by the i-th push so far, or ("pop",).
push = st.tuples(
    st.just("push"),
    st.lists(st.sampled_from(sorted(OPS)), min_size=1, max_size=2, unique=True),
    st.dictionaries(st.sampled_from(ARGS), st.integers(1, 9), max_size=3),
)
step = st.one_of(
    push, st.tuples(st.just("reuse"), st.integers(0, 9)), st.just(("pop",))
)


def model_call(stack, op, call_kwargs):
    """tf-slim's rule: the innermost scope's dict, then the call's own kwargs."""
    scope = stack[-1] if stack else {}
    return {"a": 0, "b": 0, "c": 0, **scope.get(op, {}), **call_kwargs}


@settings(max_examples=150, deadline=None)
@given(
    st.lists(step, max_size=12),
    st.dictionaries(st.sampled_from(ARGS), st.integers(20, 29), max_size=2),
)
def test_nesting_matches_the_model_of_tf_slims_rules(program, call_kwargs):
    with contextlib.ExitStack() as outer:
        contexts: list[contextlib.ExitStack] = []
        model: list[dict] = []
        yielded: list[tuple[dict, dict]] = []  # (yielded dict, model) per push
        for item in program:
            if item[0] == "pop":
                if contexts:
                    contexts.pop().close()
                    model.pop()
                continue
            ctx = outer.enter_context(contextlib.ExitStack())
            if item[0] == "push":
                _, ops, kwargs = item
                sc = ctx.enter_context(slim.arg_scope([OPS[o] for o in ops], **kwargs))
                new = {k: dict(v) for k, v in (model[-1] if model else {}).items()}
                for o in ops:
                    new[o] = {**new.get(o, {}), **kwargs}
                yielded.append((sc, new))
            else:
                if not yielded:
                    ctx.close()
                    continue
                sc, new = yielded[item[1] % len(yielded)]
                ctx.enter_context(slim.arg_scope(sc))
            contexts.append(ctx)
            model.append(new)
            for name, op in OPS.items():
                assert op(**call_kwargs) == model_call(model, name, call_kwargs)
                # A positional argument wins over the scope too.
                assert op(None, 5)["a"] == 5
            assert h(**call_kwargs) == model_call([], "h", call_kwargs)
            want = {slim.arg_scope_func_key(OPS[o]): v for o, v in model[-1].items()}
            assert slim.current_arg_scope() == want
    assert slim.current_arg_scope() == {}


def test_later_arguments_win_and_the_call_wins_over_all():
    with slim.arg_scope([f, g], a=1, b=1):
        with slim.arg_scope([f], b=2, c=2):
            assert f() == {"a": 1, "b": 2, "c": 2}
            assert g() == {"a": 1, "b": 1, "c": 0}
            assert f(b=7) == {"a": 1, "b": 7, "c": 2}
            assert f(None, 7, 8) == {"a": 7, "b": 8, "c": 2}
        assert f() == {"a": 1, "b": 1, "c": 0}
    assert f() == {"a": 0, "b": 0, "c": 0}


def test_a_reused_scope_replaces_the_current_one():
    with slim.arg_scope([f], a=1) as sc:
        pass
    with slim.arg_scope([f], b=2), slim.arg_scope([g], c=3):
        with slim.arg_scope(sc):
            assert f() == {"a": 1, "b": 0, "c": 0}
            assert g() == {"a": 0, "b": 0, "c": 0}
        assert f() == {"a": 0, "b": 2, "c": 0}


def test_the_yielded_scope_is_a_copy():
    with slim.arg_scope([f], a=1) as sc:
        sc[slim.arg_scope_func_key(f)]["a"] = 99
        assert f()["a"] == 1


def test_scope_exits_on_error():
    with pytest.raises(RuntimeError), slim.arg_scope([f], a=1):
        raise RuntimeError("boom")
    assert f()["a"] == 0


def test_scopes_are_per_thread():
    seen = {}

    def other():
        seen["other"] = f()["a"]

    with slim.arg_scope([f], a=3):
        t = threading.Thread(target=other)
        t.start()
        t.join()
        seen["main"] = f()["a"]
    assert seen == {"other": 0, "main": 3}


def test_decorated_function_keeps_name_doc_and_signature():
    assert slim.conv2d.__name__ == "convolution2d"
    assert slim.conv2d is slim.convolution2d
    assert slim.separable_conv2d.__name__ == "separable_convolution2d"
    assert slim.conv2d_transpose.__name__ == "convolution2d_transpose"
    assert "padding" in inspect.signature(slim.conv2d).parameters
    assert slim.has_arg_scope(slim.conv2d) and not slim.has_arg_scope(h)
    assert slim.has_arg_scope(slim.batch_norm)
    assert not slim.has_arg_scope(slim.repeat)  # as tf-slim: not decorated
    assert slim.arg_scoped_arguments(f) == ["x", "a", "b", "c"]


# --------------------------------------------------------------------- errors


def enter(*args, **kwargs):
    with slim.arg_scope(*args, **kwargs):
        pass


def test_an_undecorated_op_is_a_value_error_naming_it():
    with pytest.raises(jse.LayerArgumentError, match=r"h is not decorated") as e:
        enter([f, h], a=1)
    assert isinstance(e.value, ValueError)
    assert "@add_arg_scope" in str(e.value)
    with pytest.raises(jse.LayerArgumentError, match="not decorated"):
        slim.arg_scoped_arguments(h)


def test_a_single_function_instead_of_a_list_is_a_type_error():
    with pytest.raises(jse.ArgumentTypeError, match=r"list/tuple") as e:
        enter(f, a=1)  # type: ignore[arg-type]
    assert isinstance(e.value, TypeError)
    assert "arg_scope([slim.conv2d]" in str(e.value)


def test_a_dict_with_kwargs_is_a_value_error():
    with slim.arg_scope([f], a=1) as sc:
        pass
    with pytest.raises(jse.LayerArgumentError, match="kwargs must be empty"):
        enter(sc, b=2)


def test_an_argument_the_op_lacks_is_a_type_error_at_open():
    with pytest.raises(jse.UnknownArgumentError, match=r"no argument 'strides'") as e:
        enter([slim.conv2d, slim.max_pool2d], strides=2)
    assert isinstance(e.value, TypeError)
    assert "stride" in str(e.value)
    # max_pool2d has no activation_fn: listing it fails, conv2d alone works.
    with pytest.raises(jse.UnknownArgumentError, match="max_pool2d"):
        enter([slim.conv2d, slim.max_pool2d], activation_fn=None)
    with slim.arg_scope([slim.conv2d], activation_fn=None):
        pass


def test_a_function_with_var_kwargs_accepts_any_argument():
    @slim.add_arg_scope
    def k(x, **kwargs):
        return kwargs

    with slim.arg_scope([k], anything=1):
        assert k(0) == {"anything": 1}


def test_errors_pickle():
    with pytest.raises(jse.LayerArgumentError) as e, slim.arg_scope([h], a=1):
        pass
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is type(e.value) and str(again) == str(e.value)
