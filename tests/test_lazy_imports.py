"""The stand-ins of nin_profile/engine/_lazy_imports.py: same numbers as with torch's real
modules, the real modules left unimported, and anything the stand-ins do not answer taken from
the real ones.

Each test runs in a fresh interpreter: in this one, other tests may have imported the modules.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

HEAVY = ("torch._dynamo", "torch.fx.experimental.symbolic_shapes", "sympy")


def run_fresh(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_analysis_is_the_same_with_the_real_modules_and_leaves_them_unimported() -> None:
    run_fresh(
        f"""
        import sys
        from nin_profile.engine.analysis import AnalysisConfig, analyse_model

        cfg = AnalysisConfig(batch=4, device="cuda", optimizer="adam")
        with_stand_ins = {{name: analyse_model(name, cfg) for name in ("nin", "alexnet")}}
        imported = [name for name in {HEAVY!r} if name in sys.modules]
        assert not imported, imported

        import sympy, torch._dynamo, torch.fx.experimental.symbolic_shapes  # the real ones
        with_real = {{name: analyse_model(name, cfg) for name in ("nin", "alexnet")}}
        assert with_stand_ins == with_real
        """
    )


def test_stand_ins_hand_over_to_the_real_modules_and_leave_no_trace() -> None:
    run_fresh(
        """
        import sys
        import torch
        from nin_profile.engine._lazy_imports import without_heavy_imports

        with without_heavy_imports():
            import sympy
            from torch.fx.experimental import symbolic_shapes as shapes

            assert not isinstance(1, sympy.Basic)
            assert shapes.sym_eq((1, 2), [1, 2]) is True
            assert shapes.guard_or_false(False) is False
            assert shapes.is_nested_int(3) is False
            # A name a stand-in does not answer imports the real module and comes from it.
            shape_env = shapes.ShapeEnv
            real = sys.modules["torch.fx.experimental.symbolic_shapes"]
            assert real is not shapes and shape_env is real.ShapeEnv
            x = sympy.Symbol("x")  # sympy imported for real from here on
            assert isinstance(x, sympy.Basic)
            assert "sympy" in sys.modules and sys.modules["sympy"] is not sympy

        with without_heavy_imports():
            import torch._dynamo

        assert "torch._dynamo" not in sys.modules and "_dynamo" not in vars(torch)
        # No module kept a stand-in: the real symbolic_shapes, imported inside the first block,
        # has the real sympy, not the stand-in that was in sys.modules when it was imported.
        from nin_profile.engine._lazy_imports import _StandIn

        kept = [
            (module_name, attr)
            for module_name, module in list(sys.modules.items())
            if module_name not in ("__main__", "__mp_main__")  # this script's own names
            for attr, value in list(vars(module).items())
            if isinstance(value, _StandIn)
        ]
        assert not kept, kept
        assert sys.modules["torch.fx.experimental.symbolic_shapes"].sympy is sys.modules["sympy"]
        """
    )


def test_user_modules_get_the_real_modules_or_stand_ins_that_hand_over(tmp_path: Path) -> None:
    """A user's module, and what its builder imports, are imported outside the trace: they get
    the real modules. A module first imported during the trace (here by the model's forward)
    keeps the stand-in, whose `disable` is the real one once the trace has ended."""
    files = {
        "usermodel.py": """
            from torch import nn

            class Net(nn.Sequential):
                def forward(self, x):
                    import during_forward  # first imported inside the trace
                    return super().forward(x)

            def net():
                import while_building
                return Net(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
            """,
        "while_building.py": "from torch.fx.experimental import symbolic_shapes as shapes\n",
        "during_forward.py": "import torch._dynamo as dyn\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    run_fresh(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from nin_profile.engine.analysis import AnalysisConfig, analyse_model
        from nin_profile.inputs import InputSpec

        cfg = AnalysisConfig(batch=2, inputs=InputSpec.image(1, 8), device="cuda")
        analyse_model("usermodel:net", cfg)
        import during_forward, while_building

        assert while_building.shapes is sys.modules["torch.fx.experimental.symbolic_shapes"]
        assert type(while_building.shapes).__name__ == "module"  # the real one
        assert type(during_forward.dyn).__name__ == "_DynamoStandIn"  # kept from the trace

        def f():
            return 1

        assert during_forward.dyn.disable(f) is not f  # the real disable wraps it
        """
    )
