// The fast harness: a Verilator model of the controller (its byte streams) or of the virtual
// board (its UART pins), clocked from C++, spoken to by the host over a pipe a frame at a time.
//
// `systolic.sim.fast` builds this file with the design (the model's class is always `Vtop`) and
// talks to it on stdin/stdout. Python never sees a clock edge: it queues the bytes of a request,
// then asks for a reply of so many bytes, and the harness clocks the design until they are
// there (or a cycle budget runs out). Commands (little-endian integers):
//
//   'S' u32 n, n × (u8 kind, u32 value)   queue symbols for the design's input:
//           kind 0: a byte (value); kind 1: a byte whose stop bit is low (framing error);
//           kind 2: a break, the line low for `value` bit times; kind 3: idle for `value`
//           bit times; kind 4: line_fault high for one cycle (stream top only)
//   'R' u32 count, u64 budget             clock until `count` reply bytes are there
//           -> u8 status (0 ok, 1 budget spent), u32 n, n bytes (all that arrived, at most count)
//   'Q' u64 quiet, u64 budget             clock until input is sent and nothing arrived for
//           `quiet` cycles; drop what arrived   -> u8 status, u32 bytes dropped
//   'C' u64 cycles                        clock           -> u8 0
//   'T' u8 on                             waveform recording on or off  -> u8 status
//   'I'                                   -> u64 cycles so far, u64 ns spent clocking
//   'X'                                   exit            -> u8 0
//
// Defines: HARNESS_UART (the top has uart_rx/uart_tx pins; DIVISOR clock cycles a bit, else the
// top has rx/tx byte streams and line_fault; Verilator names a port `rx__valid` `rx___05Fvalid`), HARNESS_TRACE (FST waveforms to argv[1]).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <vector>

#include "Vtop.h"
#include "verilated.h"
#ifdef HARNESS_TRACE
#include "verilated_fst_c.h"
#endif

namespace {

struct Symbol {
    uint8_t kind;
    uint32_t value;
};

enum : uint8_t { BYTE = 0, BAD_STOP = 1, BREAK = 2, IDLE = 3, LINE_FAULT = 4 };

std::unique_ptr<VerilatedContext> ctx;
std::unique_ptr<Vtop> top;
#ifdef HARNESS_TRACE
std::unique_ptr<VerilatedFstC> waves;
const char *fst_path = nullptr;
bool tracing = false;
#endif
uint64_t cycles = 0;
uint64_t clock_ns = 0;
std::deque<Symbol> queue;            // to the design
std::vector<uint8_t> arrived;        // from the design, not yet taken
uint64_t last_activity = 0;          // the last cycle a byte arrived or the design was sending

void read_exact(void *buf, size_t n) {
    if (n && fread(buf, 1, n, stdin) != n) {
        std::exit(0);                // the host has gone: nothing more to do
    }
}

template <typename T> T get() {
    T v;
    read_exact(&v, sizeof v);
    return v;
}

template <typename T> void put(T v) { fwrite(&v, sizeof v, 1, stdout); }

#ifdef HARNESS_UART
// The host's UART: a transmitter driving uart_rx and a receiver decoding uart_tx, 8N1.
struct Transmitter {
    uint32_t bit = 0, left = 0;      // position in the current symbol, cycles left in the bit
    uint32_t bits = 0;               // bits of the current symbol
    Symbol sym{};
    bool busy = false;
    int level() const {
        if (!busy) return 1;
        if (sym.kind == BREAK) return 0;
        if (sym.kind == IDLE) return 1;
        if (bit == 0) return 0;                          // start bit
        if (bit <= 8) return (sym.value >> (bit - 1)) & 1;
        return sym.kind == BAD_STOP ? 0 : 1;             // stop bit
    }
    // Before a cycle: start the next symbol when idle.
    void prepare() {
        if (busy || queue.empty()) return;
        sym = queue.front();
        queue.pop_front();
        busy = true;
        bit = 0;
        left = DIVISOR;
        bits = (sym.kind == BREAK || sym.kind == IDLE) ? sym.value : 10;
        if (bits == 0) busy = false;
    }
    // After a cycle.
    void step() {
        if (!busy) return;
        if (--left == 0) {
            left = DIVISOR;
            if (++bit == bits) busy = false;
        }
    }
} tx;

struct Receiver {
    bool busy = false;
    uint32_t count = 0;              // cycles since the start bit's falling edge
    uint32_t byte = 0;
    int prev = 1;
    void sample(int line) {
        if (!busy) {
            if (prev == 1 && line == 0) {
                busy = true;
                count = 0;
                byte = 0;
            }
        } else {
            ++count;
            // Bit k (0: start, 1..8: data, 9: stop) is sampled in its middle.
            if (count % DIVISOR == DIVISOR / 2) {
                uint32_t k = count / DIVISOR;
                if (k == 0 && line != 0) {
                    busy = false;        // a glitch, not a start bit
                } else if (k >= 1 && k <= 8) {
                    byte |= uint32_t(line) << (k - 1);
                } else if (k == 9) {
                    // A low stop bit is a framing error: the byte is kept (the host's driver
                    // checks frames); the receiver waits for the line to go high again.
                    arrived.push_back(uint8_t(byte));
                    busy = false;
                    if (line == 0) {
                        prev = 0;
                        return;
                    }
                }
            }
        }
        prev = line;
    }
} rx;
#endif

void tick() {
    auto &t = *top;
#ifdef HARNESS_UART
    tx.prepare();
    t.uart_rx = tx.level();
    t.clk = 0;
    t.eval();
    rx.sample(t.uart_tx);
    if (tx.busy || rx.busy || !t.uart_tx) last_activity = cycles;
#else
    bool fault = false;
    while (!queue.empty() && queue.front().kind != BYTE) {
        fault = fault || queue.front().kind == LINE_FAULT;
        queue.pop_front();
    }
    t.rx___05Fvalid = !queue.empty();
    t.rx___05Fpayload = queue.empty() ? 0 : queue.front().value;
    t.line_fault = fault;
    t.tx___05Fready = 1;
    t.clk = 0;
    t.eval();
    bool rx_fire = t.rx___05Fvalid && t.rx___05Fready;
    if (t.tx___05Fvalid) {
        arrived.push_back(uint8_t(t.tx___05Fpayload));
        last_activity = cycles;
    }
    if (t.rx___05Fvalid) last_activity = cycles;
#endif
#ifdef HARNESS_TRACE
    if (tracing) waves->dump(2 * cycles);
#endif
    t.clk = 1;
    t.eval();
#ifdef HARNESS_TRACE
    if (tracing) waves->dump(2 * cycles + 1);
#endif
#ifdef HARNESS_UART
    tx.step();
#else
    if (rx_fire) queue.pop_front();
#endif
    ++cycles;
}

// Clock while `more()` holds and the budget lasts; return whether `more()` stopped holding.
template <typename F> bool run(uint64_t budget, F more) {
    auto start = std::chrono::steady_clock::now();
    uint64_t until = cycles + budget;
    bool done = true;
    while (more()) {
        if (cycles >= until) {
            done = false;
            break;
        }
        tick();
    }
    clock_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(
                    std::chrono::steady_clock::now() - start).count();
    return done;
}

void reset() {
    top->rst = 1;
#ifdef HARNESS_UART
    top->uart_rx = 1;
#else
    top->rx___05Fvalid = 0;
    top->tx___05Fready = 1;
    top->line_fault = 0;
#endif
    for (int i = 0; i < 4; ++i) {
        top->clk = 0;
        top->eval();
        top->clk = 1;
        top->eval();
    }
    top->rst = 0;
    // The design takes `rst` through a register (`fast_top`, systolic.sim.fast): one more
    // cycle, inputs idle, lets its reset fall before the first byte is offered.
    top->clk = 0;
    top->eval();
    top->clk = 1;
    top->eval();
}

}  // namespace

int main(int argc, char **argv) {
    ctx = std::make_unique<VerilatedContext>();
    ctx->commandArgs(1, argv);
    top = std::make_unique<Vtop>(ctx.get());
#ifdef HARNESS_TRACE
    ctx->traceEverOn(true);
    fst_path = argc > 1 ? argv[1] : "waves.fst";
#endif
    reset();
    for (;;) {
        int cmd = fgetc(stdin);
        if (cmd == EOF || cmd == 'X') {
            break;
        }
        switch (cmd) {
        case 'S': {
            uint32_t n = get<uint32_t>();
            for (uint32_t i = 0; i < n; ++i) {
                Symbol s;
                s.kind = get<uint8_t>();
                s.value = get<uint32_t>();
                queue.push_back(s);
            }
            continue;                               // no reply: requests stream in
        }
        case 'R': {
            uint32_t count = get<uint32_t>();
            uint64_t budget = get<uint64_t>();
            bool ok = run(budget, [&] { return arrived.size() < count; });
            uint32_t n = arrived.size() < count ? arrived.size() : count;
            put<uint8_t>(ok ? 0 : 1);
            put<uint32_t>(n);
            fwrite(arrived.data(), 1, n, stdout);
            arrived.erase(arrived.begin(), arrived.begin() + n);
            break;
        }
        case 'Q': {
            uint64_t quiet = get<uint64_t>();
            uint64_t budget = get<uint64_t>();
            last_activity = cycles;
            bool ok = run(budget, [&] {
                return !queue.empty() || cycles - last_activity < quiet;
            });
            put<uint8_t>(ok ? 0 : 1);
            put<uint32_t>(arrived.size());
            arrived.clear();
            break;
        }
        case 'C': {
            uint64_t n = get<uint64_t>();
            uint64_t until = cycles + n;
            run(n, [&] { return cycles < until; });
            put<uint8_t>(0);
            break;
        }
        case 'T': {
            uint8_t on = get<uint8_t>();
#ifdef HARNESS_TRACE
            if (on && !waves) {
                waves = std::make_unique<VerilatedFstC>();
                top->trace(waves.get(), 99);
                waves->open(fst_path);
            }
            tracing = on;
            if (waves) waves->flush();
            put<uint8_t>(0);
#else
            put<uint8_t>(on ? 1 : 0);            // built without tracing
#endif
            break;
        }
        case 'I':
            put<uint64_t>(cycles);
            put<uint64_t>(clock_ns);
            break;
        default:
            fprintf(stderr, "fast harness: unknown command %d\n", cmd);
            return 2;
        }
        fflush(stdout);
    }
#ifdef HARNESS_TRACE
    if (waves) waves->close();
#endif
    top->final();
    put<uint8_t>(0);
    fflush(stdout);
    return 0;
}
