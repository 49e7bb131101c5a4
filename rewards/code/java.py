"""HumanEval-X Java: `HumanEvalJavaReward` (javac and java with javatuples on the classpath, the
JVM sized for the jail; each `assert` of `main` one test)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from rewards import multipl_e
from rewards.code.compiled import _CompiledCodeReward
from rewards.sandbox import Job, Limits, Sandbox, command_job

JAVATUPLES_JAR = "/usr/share/java/javatuples.jar"  # Debian's libjavatuples-java

_JVM_FLAGS = (
    "-Xmx256m",
    "-Xss8m",
    "-XX:CompressedClassSpaceSize=64m",
    "-XX:MaxMetaspaceSize=192m",
    "-XX:ReservedCodeCacheSize=48m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-XX:-UsePerfData",
    "-Xshare:auto",
)


class HumanEvalJavaReward(_CompiledCodeReward):
    """HumanEval-X Java (MultiPL-E): javac of the candidate's class and the harness class, then
    `java` with javatuples on the classpath; each `assert` of `main` is one test."""

    name = "humaneval-java"
    language = "java"
    CANARY = (
        "        return Pair.with(Collections.min(xs), Collections.max(xs));\n",
        {
            "name": "canary_min_max",
            "stop_tokens": ["\n    }\n"],
            "prompt": "import java.util.*;\nimport org.javatuples.*;\nclass Problem {\n"
            "    // The smallest and the largest element.\n"
            "    public static Pair<Long, Long> minMax(ArrayList<Long> xs) {\n",
            "tests": "    }\n    public static void main(String[] args) {\n"
            "    assert(minMax((new ArrayList<Long>(Arrays.asList((long)3l, (long)1l, (long)2l))))"
            ".equals((Pair.with(1l, 3l))));\n"
            "    assert(minMax((new ArrayList<Long>(Arrays.asList((long)-5l))))"
            ".equals((Pair.with(-5l, -5l))));\n    }\n\n}\n",
        },
    )

    def __init__(self, *args: Any, classpath: Sequence[str] = (JAVATUPLES_JAR,), **kwargs: Any) -> None:
        self.classpath = list(classpath)
        super().__init__(*args, **kwargs)

    def default_limits(self) -> Limits:
        return Limits(wall_s=10.0, cpu_s=10.0, memory_mb=1536, max_procs=128)

    def compile_limits(self) -> Limits:
        return Limits(wall_s=60.0, cpu_s=60.0, memory_mb=2048, max_procs=128, file_mb=64)

    def make_sandbox(self) -> Sandbox:
        dirs = sorted(
            {
                os.path.dirname(os.path.realpath(p))
                for p in self.classpath
                if not os.path.realpath(p).startswith("/usr/") and os.path.isdir(os.path.dirname(p))
            }
        )
        return Sandbox(workers=self.workers, shared_dirs=dirs, allow_unsandboxed=self.allow_unsandboxed)

    def parse_record(self, reference: Any) -> multipl_e.Plan:
        return multipl_e.java_plan(reference)

    def _cp(self) -> str:
        parts = []
        for p in self.classpath:
            real = os.path.realpath(p)
            inside = (
                None
                if real.startswith("/usr/") or not os.path.isdir(os.path.dirname(real))
                else self.sandbox.shared_path(os.path.dirname(real))
            )
            parts.append(os.path.join(inside, os.path.basename(real)) if inside else real)
        return ":".join(["."] + parts)

    def _javac(self, *files: str) -> list[str]:
        return [
            "javac",
            *(f"-J{f}" for f in _JVM_FLAGS),
            "-encoding",
            "UTF-8",
            "-nowarn",
            "-d",
            ".",
            "-cp",
            self._cp(),
            *files,
        ]

    def _java(self, cls: str) -> list[str]:
        return ["java", *_JVM_FLAGS, "-cp", self._cp(), cls]

    def plan_job(self, plan: multipl_e.Plan) -> Job:
        files = {
            "LmsbHarness.java": plan.harness,
            f"{plan.class_name}.java": plan.stub,
            "LmsbExpected.java": plan.checker,
        }
        steps = [
            self._javac("LmsbHarness.java", f"{plan.class_name}.java", "LmsbExpected.java"),
            self._java("LmsbExpected"),
        ]
        return command_job(steps, files, [self.compile_limits(), self.limits])

    def job(self, code: str, plan: multipl_e.Plan) -> Job:
        files = {
            f"{plan.class_name}.java": plan.candidate_prefix + code + plan.candidate_suffix,
            "LmsbHarness.java": plan.harness,
        }
        steps = [self._javac(f"{plan.class_name}.java", "LmsbHarness.java"), self._java("LmsbHarness")]
        return command_job(steps, files, [self.compile_limits(), self.limits])
