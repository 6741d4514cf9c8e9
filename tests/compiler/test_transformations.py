"""Each pass keeps the type signature and the meaning: conformance cases before and after."""

import pytest

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import transformations as tr
from fedcore.compiler.ir_parser import parse_ir
from fedcore.testing import conformance

PASSES = [tr.reduce_calls, tr.inline_blocks, tr.remove_unused_locals, tr.merge_chained_maps, tr.run_pipeline]


class _TransformingExecutor:
    """Runs the reference interpreter on the IR after a pass."""

    def __init__(self, transform, num_clients=None):
        self._transform = transform
        self._reference = fedcore.ReferenceExecutor(num_clients=num_clients)

    def execute(self, comp, argument, num_clients=None):
        new_ir = self._transform(comp.ir)
        assert new_ir.type_signature == comp.type_signature
        return self._reference.execute(fedcore.Computation(new_ir, comp.name, comp._parameter_names), argument, num_clients)


@pytest.mark.parametrize("transform", PASSES, ids=lambda p: p.__name__)
@conformance.parametrize("case", conformance.select(exclude_tags=("error",)))
def test_pass_preserves_meaning(case, transform):
    conformance.run_case(case, lambda n: _TransformingExecutor(transform, n))


def _text(node):
    return bb.to_string(node, annotated=True)


def test_inline_blocks_keeps_shared_work_bound():
    node = parse_ir("(x:{int32}@CLIENTS -> (let a=federated_sum(x),b=a,c=federated_sum(x) in <a,b,c>))")
    assert _text(tr.inline_blocks(node)) == (
        "(x:{int32}@CLIENTS -> (let a=federated_sum(x) in <a,a,federated_sum(x)>))"
    )


def test_remove_unused_locals():
    node = parse_ir("(x:{int32}@CLIENTS -> (let a=federated_sum(x),b=federated_min(x) in b))")
    assert _text(tr.remove_unused_locals(node)) == "(x:{int32}@CLIENTS -> (let b=federated_min(x) in b))"


def test_reduce_calls_applies_lambdas_and_selects_from_structs():
    node = parse_ir("(x:int32 -> <(y:int32 -> <y,y>)(x)[1],<a=x,b=1>.b>)")
    assert _text(tr.reduce_calls(node)) == "(x:int32 -> <x,1>)"


def test_merge_chained_maps():
    node = parse_ir(
        "(x:{<a=int32,b=int32>}@CLIENTS -> federated_map(<(t:int32 -> <t,t>),federated_map(<(s:<a=int32,b=int32> -> s.a),x>)>))"
    )
    merged = tr.reduce_calls(tr.merge_chained_maps(node))
    assert _text(merged) == "(x:{<a=int32,b=int32>}@CLIENTS -> federated_map(<(m_1:<a=int32,b=int32> -> <m_1.a,m_1.a>),x>))"


def test_substitution_avoids_capture():
    # Substituting y := x under a binder named x must rename the binder.
    node = parse_ir("(x:int32 -> (y:int32 -> (x:int32 -> <x,y>))(x))")
    reduced = tr.reduce_calls(node)
    assert _text(reduced) == "(x:int32 -> (x_1:int32 -> <x_1,x>))"


def test_fused_map_reduce_recognizes_the_pattern():
    node = parse_ir("(x:{int32}@CLIENTS -> federated_sum(federated_map(<(s:int32 -> s),x>)))")
    parts = tr.fused_map_reduce(node.result)
    assert parts["reduce"] == "federated_sum"
    assert _text(parts["clients"]) == "x"
    assert tr.fused_map_reduce(parse_ir("(x:{int32}@CLIENTS -> federated_sum(x))").result) is None


def test_pipeline_rejects_a_pass_that_changes_the_type():
    node = parse_ir("(x:int32 -> x)")
    with pytest.raises(AssertionError, match="changed the type signature"):
        tr.run_pipeline(node, [lambda n: parse_ir("(x:int32 -> <x>)")])
