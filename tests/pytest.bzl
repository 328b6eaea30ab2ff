"""pytest_test: a py_test that runs one pytest file with the repo's pytest.ini and conftest."""

def pytest_test(src, size = "large", **kwargs):
    name = src[:-len(".py")].replace("/", "_")
    native.py_test(
        name = name,
        srcs = [src, "pytest_main.py"],
        main = "pytest_main.py",
        args = ["$(location %s)" % src],
        data = ["//:pytest.ini", "//:docs"] + native.glob(["**/conftest.py", "**/__init__.py", "**/*.md"]),
        deps = ["//:bstf", "//:reproductions"],
        python_version = "PY3",
        size = size,
        **kwargs
    )
