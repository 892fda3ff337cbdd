"""The one compiled part: media/_fastcopy.c (optional; the pure-Python path does the same)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "teleconsult.media._fastcopy",
            ["media/_fastcopy.c"],
            extra_compile_args=["-O2", "-Wall", "-Werror"],
            optional=True,
        )
    ]
)
