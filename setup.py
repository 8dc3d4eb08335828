"""Build the Cython scoring core and the gRPC stubs; install the card's folders under `kairos.*`.

The repository keeps the design card's layout (core/, cluster/, protos/, ...) while the
installed code lives in one namespace: `core/` is installed as `kairos.core`, `cluster/` as
`kairos.cluster`, and the stubs generated from `protos/kairos/v1/*.proto` as `kairos.v1`
(the Python package mirrors the proto package). `kairos` itself is an implicit namespace
package, so nothing generic lands in site-packages.
"""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

PACKAGE_DIRS = {
    "kairos.core": "core",
    "kairos.core.catalogs": "core/catalogs",
    "kairos.cluster": "cluster",
    **{f"kairos.cluster.{role}": f"cluster/{role}"
       for role in ("cli", "console", "control", "evidence", "gateway", "shard", "storage",
                     "transport")},
    "kairos.v1": "protos/kairos/v1",
}


def generate_stubs() -> None:
    """protoc: messages, type stubs and gRPC services beside each .proto (never edited by
    hand; .gitignore keeps them out of the repository)."""
    import grpc_tools
    from grpc_tools import protoc
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = sorted(glob.glob("protos/kairos/v1/*.proto"))
    status = protoc.main(["grpc_tools.protoc", "-Iprotos", f"-I{well_known}",
                          "--python_out=protos", "--pyi_out=protos",
                          "--grpc_python_out=protos", *protos])
    if status != 0:
        raise SystemExit(f"protoc failed on {protos}")


def kernel_extensions() -> list[Extension]:
    """Cythonize core's compiled modules (the scoring kernel, the profile table's id index)
    each as a top-level module (so Cython finds the _kernel.pxd beside _kernel.pyx), then
    install them as `kairos.core.<name>`."""
    extensions = cythonize(
        [Extension(
            name,
            [f"core/{name}.pyx"],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
        ) for name in ("_kernel", "_rowindex")],
        include_path=["core"],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False},
    )
    for ext in extensions:
        ext.name = "kairos.core." + ext.name
    return extensions


generate_stubs()
setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"kairos.core": ["catalog.schema.json", "*.pxd"],
                  "kairos.core.catalogs": ["*.yaml"],
                  "kairos.cluster.console": ["templates/*.html", "static/*"],
                  "kairos.v1": ["*.proto", "*.pyi"]},
    exclude_package_data={"kairos.core": ["*.c"]},
    ext_modules=kernel_extensions(),
    zip_safe=False,
)
