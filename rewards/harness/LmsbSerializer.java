// The Java serialiser of the MultiPL-E code rewards (`rewards.multipl_e.JAVA_SERIALIZER`).
// `rewards.multipl_e.java_plan` pastes the class members between the two marker lines into each
// record's LmsbHarness (which calls the candidate) and LmsbExpected (which evaluates the expected
// values). `lmsbEmit(k, f)` writes f's value as one line of tagged JSON to the result channel
// (fd 3). This class itself is never run: it exists so that javac can check the members.
// Checked on its own by tests/test_code_rewards.py::test_harness_files_compile (javac, with
// javatuples on the classpath).
final class LmsbSerializer {
// ---- lmsb: pasted from here ----
    private static java.io.OutputStream lmsbOut;
    private static void lmsbStr(StringBuilder o, String s) {
        o.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') { o.append('\\').append(c); }
            else if (c < 0x20 || c >= 0x7f) { o.append(String.format("\\u%04x", (int) c)); }
            else o.append(c);
        }
        o.append('"');
    }
    private static String lmsbOne(Object v) { StringBuilder s = new StringBuilder(); lmsbPut(s, v); return s.toString(); }
    private static void lmsbSorted(StringBuilder o, String tag, java.util.List<String> items) {
        java.util.Collections.sort(items);
        o.append("{\"").append(tag).append("\":[").append(String.join(",", items)).append("]}");
    }
    private static void lmsbPut(StringBuilder o, Object v) {
        if (v == null) { o.append("null"); }
        else if (v instanceof Boolean) { o.append(((Boolean) v) ? "true" : "false"); }
        else if (v instanceof Long || v instanceof Integer || v instanceof Short || v instanceof Byte) { o.append(((Number) v).longValue()); }
        else if (v instanceof java.math.BigInteger) { o.append(v.toString()); }
        else if (v instanceof Double || v instanceof Float) {
            double d = ((Number) v).doubleValue();
            if (Double.isNaN(d)) o.append("{\"$f\":\"nan\"}");
            else if (Double.isInfinite(d)) o.append(d > 0 ? "{\"$f\":\"inf\"}" : "{\"$f\":\"-inf\"}");
            else o.append(Double.toString(d));
        }
        else if (v instanceof Character) { lmsbStr(o, String.valueOf((char) (Character) v)); }
        else if (v instanceof String) { lmsbStr(o, (String) v); }
        else if (v instanceof java.util.Optional) {
            java.util.Optional<?> p = (java.util.Optional<?>) v;
            o.append("{\"$opt\":[");
            if (p.isPresent()) lmsbPut(o, p.get());
            o.append("]}");
        }
        else if (v instanceof java.util.List) {
            o.append('[');
            boolean first = true;
            for (Object x : (java.util.List<?>) v) { if (!first) o.append(','); first = false; lmsbPut(o, x); }
            o.append(']');
        }
        else if (v instanceof org.javatuples.Tuple) {
            o.append("{\"$t\":[");
            boolean first = true;
            for (Object x : ((org.javatuples.Tuple) v).toList()) { if (!first) o.append(','); first = false; lmsbPut(o, x); }
            o.append("]}");
        }
        else if (v instanceof java.util.Map) {
            java.util.List<String> items = new java.util.ArrayList<>();
            for (java.util.Map.Entry<?, ?> e : ((java.util.Map<?, ?>) v).entrySet()) items.add("[" + lmsbOne(e.getKey()) + "," + lmsbOne(e.getValue()) + "]");
            lmsbSorted(o, "$d", items);
        }
        else if (v instanceof java.util.Set) {
            java.util.List<String> items = new java.util.ArrayList<>();
            for (Object x : (java.util.Set<?>) v) items.add(lmsbOne(x));
            lmsbSorted(o, "$s", items);
        }
        else if (v.getClass().isArray()) {
            o.append('[');
            int n = java.lang.reflect.Array.getLength(v);
            for (int i = 0; i < n; i++) { if (i > 0) o.append(','); lmsbPut(o, java.lang.reflect.Array.get(v, i)); }
            o.append(']');
        }
        else { o.append("{\"$o\":"); lmsbStr(o, v.getClass().getName()); o.append('}'); }
    }
    private static void lmsbEmit(int k, java.util.concurrent.Callable<Object> f) {
        String line;
        try { line = "{\"k\":" + k + ",\"v\":" + lmsbOne(f.call()) + "}\n"; }
        catch (Throwable t) { line = "{\"k\":" + k + ",\"e\":\"exception\"}\n"; }
        try {
            if (lmsbOut == null) lmsbOut = new java.io.FileOutputStream("/dev/fd/3");
            lmsbOut.write(line.getBytes(java.nio.charset.StandardCharsets.UTF_8));
            lmsbOut.flush();
        } catch (Throwable t) { }
    }
// ---- lmsb: pasted up to here ----
}
