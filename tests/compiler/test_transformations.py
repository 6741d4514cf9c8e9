"""Each pass keeps the type signature and the meaning: conformance cases before and after."""

import pytest

import fedcore
from fedcore.compiler import building_blocks as bb
from fedcore.compiler import transformations as tr
from fedcore.compiler.ir_parser import parse_ir
from fedcore.testing import conformance

PASSES = [
    tr.reduce_calls,
    tr.inline_blocks,
    tr.remove_unused_locals,
    tr.uniquify_names,
    tr.normalize_all_equal,
    tr.merge_chained_maps,
    tr.to_call_dominant,
    tr.fuse_map_reduce,
    tr.run_pipeline,
]


def _execution_pipeline(node):
    return tr.run_pipeline(node, tr.pipeline("execution"))


PASSES.append(_execution_pipeline)


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
@conformance.parametrize("case", conformance.select(exclude_tags=("errors",)))
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


def test_fuse_map_reduce_rewrites_an_aggregate_of_a_map_to_its_fused_intrinsic():
    node = parse_ir("(x:{int32}@CLIENTS -> federated_sum(federated_map(<(s:int32 -> s),x>)))")
    fused = tr.fuse_map_reduce(node)
    assert _text(fused) == "(x:{int32}@CLIENTS -> federated_sum_of_map(<(s:int32 -> s),x>))"
    assert fused.type_signature == node.type_signature
    plain = parse_ir("(x:{int32}@CLIENTS -> federated_sum(x))")
    assert tr.fuse_map_reduce(plain) is plain or _text(tr.fuse_map_reduce(plain)) == _text(plain)


def test_fuse_map_reduce_keeps_the_other_operands_of_a_weighted_mean():
    node = parse_ir(
        "(x:<{float32}@CLIENTS,{float32}@CLIENTS> -> "
        "federated_weighted_mean(<federated_map(<(s:float32 -> s),x[0]>),x[1]>))"
    )
    assert _text(tr.fuse_map_reduce(node)) == (
        "(x:<{float32}@CLIENTS,{float32}@CLIENTS> -> federated_weighted_mean_of_map(<(s:float32 -> s),x[0],x[1]>))"
    )


def test_fuse_map_reduce_leaves_a_map_of_an_all_equal_value_and_secure_sums_alone():
    node = parse_ir("(x:{int32}@CLIENTS -> federated_secure_sum(<federated_map(<(s:int32 -> s),x>),7>))")
    assert _text(tr.fuse_map_reduce(node)) == _text(node)


def test_the_execution_pipeline_ends_with_fusion():
    assert tr.pipeline("execution")[-1] is tr.fuse_map_reduce
    assert tr.pipeline("standard") == tr.PIPELINE
    with pytest.raises(ValueError, match="unknown pipeline 'fast'"):
        tr.pipeline("fast")


def test_pipeline_rejects_a_pass_that_changes_the_type():
    node = parse_ir("(x:int32 -> x)")
    with pytest.raises(AssertionError, match="changed the type signature"):
        tr.run_pipeline(node, [lambda n: parse_ir("(x:int32 -> <x>)")])


def test_uniquify_names_gives_every_binder_its_own_name():
    node = parse_ir(
        "(x:int32 -> (let a=x,b=(x:int32 -> (let a=x in a))(a) in (let a=b in <a,x>)))"
    )
    renamed = tr.uniquify_names(node)
    assert _text(renamed) == "(x:int32 -> (let a=x,b=(x_1:int32 -> (let a_1=x_1 in a_1))(a) in (let a_2=b in <a_2,x>)))"
    binders = [n for n in bb.walk(renamed) if isinstance(n, (bb.Lambda, bb.Block))]
    names = [b.parameter_name for b in binders if isinstance(b, bb.Lambda)]
    names += [name for b in binders if isinstance(b, bb.Block) for name, _ in b.locals]
    assert len(names) == len(set(names)) == 6


def test_uniquify_names_keeps_free_names_and_avoids_them():
    node = bb.Block([("y", bb.Reference("z", fedcore.to_type("int32")))], bb.Lambda("z", fedcore.to_type("int32"), bb.Reference("y", fedcore.to_type("int32"))))
    assert _text(tr.uniquify_names(node)) == "(let y=z in (z_1:int32 -> y))"


def test_normalize_all_equal_turns_all_equal_maps_into_client_maps():
    node = parse_ir(
        "(x:int32@SERVER -> federated_sum(federated_map_all_equal(<(v:int32 -> v),federated_broadcast(x)>)))"
    )
    normalized = tr.normalize_all_equal(node)
    assert _text(normalized) == "(x:int32@SERVER -> federated_sum(federated_map(<(v:int32 -> v),federated_broadcast(x)>)))"
    inner = normalized.result.argument
    assert str(inner.type_signature) == "{int32}@CLIENTS"
    assert normalized.type_signature == node.type_signature


def test_normalize_all_equal_never_changes_the_signature():
    node = parse_ir("(x:int32@SERVER -> federated_map_all_equal(<(v:int32 -> v),federated_broadcast(x)>))")
    assert tr.normalize_all_equal(node) is node  # its result is int32@CLIENTS, which {int32}@CLIENTS is not


def test_call_dominant_form_binds_every_federated_call_once_at_the_top():
    node = parse_ir(
        "(x:<int32@SERVER,{int32}@CLIENTS> -> (let a=federated_broadcast(x[0]) in "
        "<federated_sum(federated_map(<(v:<int32,int32> -> v[0]),federated_zip_at_clients(<x[1],a>)>)),"
        "(y:int32@SERVER -> y)(x[0])>))"
    )
    cdf = tr.to_call_dominant(node)
    assert bb.to_formatted_string(cdf) == (
        "(x -> (let\n"
        "  c_1=federated_broadcast(x[0]),\n"
        "  c_2=federated_zip_at_clients(<x[1],c_1>),\n"
        "  c_3=federated_map(<(v -> v[0]),c_2>),\n"
        "  c_4=federated_sum(c_3)\n"
        "in <c_4,x[0]>))"
    )
    assert all(isinstance(v, bb.Call) for _, v in cdf.result.locals)
    assert not any(isinstance(n, bb.Block) for _, v in cdf.result.locals for n in bb.walk(v))
