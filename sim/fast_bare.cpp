// A bare Verilator loop: the design clocked for argv[1] cycles, inputs idle, nothing else.
// `systolic.sim.fast.bare_loop_rate` builds it with the same flags as the harness, as the
// ceiling the harness's cycles a second are measured against. Prints: cycles seconds.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>

#include "Vtop.h"
#include "verilated.h"

int main(int argc, char **argv) {
    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vtop>(ctx.get());
    unsigned long long n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
    top->rst = 1;
    for (int i = 0; i < 4; ++i) {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
    }
    top->rst = 0;                   // and one cycle for the registered reset to fall
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
    auto start = std::chrono::steady_clock::now();
    for (unsigned long long i = 0; i < n; ++i) {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    top->final();
    std::printf("%llu %.6f\n", n, s);
    return 0;
}
