// The C++ serialiser of the MultiPL-E code rewards (`rewards.multipl_e.CPP_SERIALIZER`).
// `rewards.multipl_e.cpp_plan` pastes everything below the marker line into each record's
// harness.cpp (which calls the candidate) and checker.cpp (which evaluates the expected values),
// after the record's own header. `lmsb_emit(k, f)` writes f()'s value as one line of tagged JSON
// to the result channel (fd 3); everything has internal linkage (an anonymous namespace).
// It takes std::sort from the record's header (every HumanEval-X prompt includes <bits/stdc++.h>,
// which the reward also force-includes from its PCH), so it is checked on its own with
// `g++ -std=c++17 -include bits/stdc++.h -fsyntax-only` by
// tests/test_code_rewards.py::test_harness_files_compile.
// ---- lmsb: pasted from here ----
#include <cmath>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>
#include <unistd.h>
namespace {
void lmsb_put(std::string& o, bool v);
void lmsb_put(std::string& o, char v);
void lmsb_put(std::string& o, const std::string& v);
void lmsb_put(std::string& o, const char* v);
void lmsb_put(std::string& o, std::nullopt_t);
template <class T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0> void lmsb_put(std::string& o, T v);
template <class T, typename std::enable_if<std::is_floating_point<T>::value, int>::type = 0> void lmsb_put(std::string& o, T v);
template <class T> void lmsb_put(std::string& o, const std::optional<T>& v);
template <class T> void lmsb_put(std::string& o, const std::vector<T>& v);
template <class A, class B> void lmsb_put(std::string& o, const std::pair<A, B>& v);
template <class... Ts> void lmsb_put(std::string& o, const std::tuple<Ts...>& v);
template <class K, class V> void lmsb_put(std::string& o, const std::map<K, V>& v);
template <class K, class V> void lmsb_put(std::string& o, const std::unordered_map<K, V>& v);
template <class T> void lmsb_put(std::string& o, const std::set<T>& v);

void lmsb_str(std::string& o, const std::string& s) {
    o += '"';
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') { o += '\\'; o += (char)c; }
        else if (c < 0x20 || c >= 0x7f) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", (unsigned)c); o += b; }
        else o += (char)c;
    }
    o += '"';
}
void lmsb_put(std::string& o, bool v) { o += v ? "true" : "false"; }
void lmsb_put(std::string& o, char v) { lmsb_str(o, std::string(1, v)); }
void lmsb_put(std::string& o, const std::string& v) { lmsb_str(o, v); }
void lmsb_put(std::string& o, const char* v) { lmsb_str(o, v ? std::string(v) : std::string()); }
void lmsb_put(std::string& o, std::nullopt_t) { o += "null"; }
template <class T, typename std::enable_if<std::is_integral<T>::value, int>::type>
void lmsb_put(std::string& o, T v) { o += std::to_string(v); }
template <class T, typename std::enable_if<std::is_floating_point<T>::value, int>::type>
void lmsb_put(std::string& o, T v) {
    double d = (double)v;
    if (std::isnan(d)) o += "{\"$f\":\"nan\"}";
    else if (std::isinf(d)) o += d > 0 ? "{\"$f\":\"inf\"}" : "{\"$f\":\"-inf\"}";
    else { char b[40]; std::snprintf(b, sizeof b, "%.17g", d); o += b; }
}
template <class T> void lmsb_put(std::string& o, const std::optional<T>& v) { if (v) lmsb_put(o, *v); else o += "null"; }
template <class T> void lmsb_put(std::string& o, const std::vector<T>& v) {
    o += '[';
    for (std::size_t i = 0; i < v.size(); ++i) { if (i) o += ','; lmsb_put(o, static_cast<T>(v[i])); }
    o += ']';
}
template <class A, class B> void lmsb_put(std::string& o, const std::pair<A, B>& v) {
    o += "{\"$t\":["; lmsb_put(o, v.first); o += ','; lmsb_put(o, v.second); o += "]}";
}
template <class Tuple, std::size_t... I> void lmsb_tuple(std::string& o, const Tuple& t, std::index_sequence<I...>) {
    ((o += (I == 0 ? "" : ","), lmsb_put(o, std::get<I>(t))), ...);
}
template <class... Ts> void lmsb_put(std::string& o, const std::tuple<Ts...>& v) {
    o += "{\"$t\":["; lmsb_tuple(o, v, std::index_sequence_for<Ts...>{}); o += "]}";
}
template <class It> void lmsb_entries(std::string& o, It b, It e) {
    std::vector<std::string> items;
    for (; b != e; ++b) { std::string s = "["; lmsb_put(s, b->first); s += ','; lmsb_put(s, b->second); s += ']'; items.push_back(s); }
    std::sort(items.begin(), items.end());
    o += "{\"$d\":[";
    for (std::size_t i = 0; i < items.size(); ++i) { if (i) o += ','; o += items[i]; }
    o += "]}";
}
template <class K, class V> void lmsb_put(std::string& o, const std::map<K, V>& v) { lmsb_entries(o, v.begin(), v.end()); }
template <class K, class V> void lmsb_put(std::string& o, const std::unordered_map<K, V>& v) { lmsb_entries(o, v.begin(), v.end()); }
template <class T> void lmsb_put(std::string& o, const std::set<T>& v) {
    o += "{\"$s\":[";
    bool first = true;
    for (const auto& x : v) { if (!first) o += ','; first = false; lmsb_put(o, x); }
    o += "]}";
}
void lmsb_line(const std::string& s) {
    std::size_t off = 0;
    while (off < s.size()) { ssize_t n = ::write(3, s.data() + off, s.size() - off); if (n <= 0) return; off += (std::size_t)n; }
}
template <class F> void lmsb_emit(int k, F f) {
    std::string line;
    try {
        std::string v;
        lmsb_put(v, f());
        line = "{\"k\":" + std::to_string(k) + ",\"v\":" + v + "}\n";
    } catch (...) {
        line = "{\"k\":" + std::to_string(k) + ",\"e\":\"exception\"}\n";
    }
    lmsb_line(line);
}
}  // namespace
