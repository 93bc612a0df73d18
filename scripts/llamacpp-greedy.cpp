// llama.cpp's greedy continuation of prompts, with the top-two logits of every step, as JSON
// lines. Built and run by scripts/llamacpp-greedy.sh (see its header for the interface); links
// against the llama.cpp that scripts/llamacpp.sh builds. Reference numerics: flash attention on,
// no weight repacking, GGML_CPU_TILED_MM=0, unless asked otherwise.

#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
    std::string model;
    int n_predict = 32;
    int threads = 0;
    bool flash_attn = true;
    bool repack = false;
    bool tiled = false;
    bool ignore_eos = false;
    bool per_prompt = false;
    bool quiet = true;
    // Each prompt is text, or token ids when `ids` is set.
    struct Prompt {
        std::string text;
        std::vector<llama_token> ids;
        bool given_as_ids = false;
    };
    std::vector<Prompt> prompts;
};

[[noreturn]] void usage_error(const std::string & msg) {
    fprintf(stderr, "llamacpp-greedy: %s (see scripts/llamacpp-greedy.sh for usage)\n", msg.c_str());
    exit(2);
}

// Replaces bytes that are not valid UTF-8 by U+FFFD, so that every line is valid JSON.
std::string valid_utf8(const std::string & s) {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        bool ok = len > 0 && i + len <= s.size();
        for (size_t k = 1; ok && k < len; k++) {
            ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
        }
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            out += "\xef\xbf\xbd";
            i += 1;
        }
    }
    return out;
}

std::string json_string(const std::string & raw) {
    std::string s = valid_utf8(raw);
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    snprintf(buf, sizeof(buf), "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    return out + "\"";
}

// Reads a JSON string literal (as written by `jq -R .` or json.dumps) from one line of stdin.
std::string parse_json_string(const std::string & line) {
    size_t i = line.find('"');
    if (i == std::string::npos) {
        usage_error("stdin prompts must be JSON strings, one a line: " + line);
    }
    std::string out;
    for (i++; i < line.size(); i++) {
        char c = line[i];
        if (c == '"') {
            return out;
        }
        if (c != '\\') {
            out += c;
            continue;
        }
        if (++i >= line.size()) {
            break;
        }
        switch (line[i]) {
            case 'n': out += '\n'; break;
            case 't': out += '\t'; break;
            case 'r': out += '\r'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'u': {
                if (i + 4 >= line.size()) {
                    usage_error("bad \\u escape in " + line);
                }
                unsigned cp = std::stoul(line.substr(i + 1, 4), nullptr, 16);
                i += 4;
                if (cp >= 0xd800 && cp < 0xdc00 && i + 6 < line.size() && line[i + 1] == '\\' && line[i + 2] == 'u') {
                    unsigned lo = std::stoul(line.substr(i + 3, 4), nullptr, 16);
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                    i += 6;
                }
                if (cp < 0x80) {
                    out += static_cast<char>(cp);
                } else if (cp < 0x800) {
                    out += static_cast<char>(0xc0 | (cp >> 6));
                    out += static_cast<char>(0x80 | (cp & 0x3f));
                } else if (cp < 0x10000) {
                    out += static_cast<char>(0xe0 | (cp >> 12));
                    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
                    out += static_cast<char>(0x80 | (cp & 0x3f));
                } else {
                    out += static_cast<char>(0xf0 | (cp >> 18));
                    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
                    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
                    out += static_cast<char>(0x80 | (cp & 0x3f));
                }
                break;
            }
            default: out += line[i];
        }
    }
    usage_error("unterminated JSON string on stdin: " + line);
}

std::vector<llama_token> parse_ids(const std::string & s) {
    std::vector<llama_token> ids;
    size_t i = 0;
    while (i < s.size()) {
        size_t end = s.find(',', i);
        if (end == std::string::npos) {
            end = s.size();
        }
        try {
            ids.push_back(std::stoi(s.substr(i, end - i)));
        } catch (...) {
            usage_error("--ids takes comma-separated token ids, not " + s);
        }
        i = end + 1;
    }
    if (ids.empty()) {
        usage_error("--ids needs at least one token id");
    }
    return ids;
}

Options parse_args(int argc, char ** argv) {
    Options o;
    auto value = [&](int & i) -> std::string {
        if (i + 1 >= argc) {
            usage_error(std::string(argv[i]) + " needs a value");
        }
        return argv[++i];
    };
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-m" || a == "--model") {
            o.model = value(i);
        } else if (a == "-n" || a == "--n-predict") {
            o.n_predict = std::atoi(value(i).c_str());
        } else if (a == "-t" || a == "--threads") {
            o.threads = std::atoi(value(i).c_str());
        } else if (a == "-fa" || a == "--fa" || a == "--flash-attn") {
            std::string v = value(i);
            if (v != "on" && v != "off") {
                usage_error("--fa takes on or off");
            }
            o.flash_attn = v == "on";
        } else if (a == "--repack") {
            o.repack = true;
        } else if (a == "--tiled") {
            o.tiled = true;
        } else if (a == "--ignore-eos") {
            o.ignore_eos = true;
        } else if (a == "--per-prompt") {
            o.per_prompt = true;
        } else if (a == "-v" || a == "--verbose") {
            o.quiet = false;
        } else if (a == "--ids") {
            Options::Prompt p;
            p.ids = parse_ids(value(i));
            p.given_as_ids = true;
            o.prompts.push_back(p);
        } else if (a == "-") {
            std::string line;
            while (std::getline(std::cin, line)) {
                if (line.find_first_not_of(" \t\r") != std::string::npos) {
                    o.prompts.push_back({parse_json_string(line), {}, false});
                }
            }
        } else if (a.size() > 1 && a[0] == '-' && a[1] == '-') {
            usage_error("unknown option " + a);
        } else {
            o.prompts.push_back({a, {}, false});
        }
    }
    if (o.model.empty()) {
        usage_error("no model (-m MODEL.gguf)");
    }
    if (o.prompts.empty()) {
        usage_error("no prompt");
    }
    if (o.n_predict < 1) {
        usage_error("-n must be at least 1");
    }
    if (o.threads <= 0) {
        o.threads = std::max(1u, std::thread::hardware_concurrency());
    }
    return o;
}

std::string piece(const llama_vocab * vocab, llama_token id) {
    std::vector<char> buf(64);
    int n = llama_token_to_piece(vocab, id, buf.data(), buf.size(), 0, true);
    if (n < 0) {
        buf.resize(-n);
        n = llama_token_to_piece(vocab, id, buf.data(), buf.size(), 0, true);
    }
    return std::string(buf.data(), std::max(n, 0));
}

std::string ids_json(const std::vector<llama_token> & ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); i++) {
        s += (i ? "," : "") + std::to_string(ids[i]);
    }
    return s + "]";
}

std::string floats_json(const std::vector<float> & v) {
    std::string s = "[";
    char buf[32];
    for (size_t i = 0; i < v.size(); i++) {
        snprintf(buf, sizeof(buf), "%s%.5f", i ? "," : "", v[i]);
        s += buf;
    }
    return s + "]";
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    Options o = parse_args(argc, argv);
    // Read once by ggml on first use: set before anything runs.
    setenv("GGML_CPU_TILED_MM", o.tiled ? "1" : "0", 1);
    if (o.quiet) {
        llama_log_set(quiet_log, nullptr);
    }
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = o.repack;
    if (o.quiet) {
        mp.progress_callback = [](float, void *) { return true; };
    }
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model) {
        fprintf(stderr, "llamacpp-greedy: cannot load %s\n", o.model.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    for (size_t pi = 0; pi < o.prompts.size(); pi++) {
        const Options::Prompt & prompt = o.prompts[pi];
        std::vector<llama_token> ids = prompt.ids;
        if (!prompt.given_as_ids) {
            // As llama-simple does: the vocab's special tokens (BOS) added, special text parsed.
            int n = -llama_tokenize(vocab, prompt.text.c_str(), prompt.text.size(), nullptr, 0, true, true);
            ids.resize(n);
            if (llama_tokenize(vocab, prompt.text.c_str(), prompt.text.size(), ids.data(), n, true, true) < 0) {
                fprintf(stderr, "llamacpp-greedy: cannot tokenize prompt %zu\n", pi);
                return 1;
            }
        }
        const int n_prompt = ids.size();
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = n_prompt + o.n_predict;
        cp.n_batch = n_prompt;
        cp.n_ubatch = n_prompt;
        cp.n_threads = o.threads;
        cp.n_threads_batch = o.threads;
        cp.flash_attn_type = o.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.no_perf = true;
        llama_context * ctx = llama_init_from_model(model, cp);
        if (!ctx) {
            fprintf(stderr, "llamacpp-greedy: cannot create a context for prompt %zu\n", pi);
            return 1;
        }

        std::vector<llama_token> out, seconds;
        std::vector<float> gaps;
        std::string continuation;
        llama_token next = 0;
        for (int step = 0; step < o.n_predict; step++) {
            llama_batch batch = step == 0 ? llama_batch_get_one(ids.data(), n_prompt) : llama_batch_get_one(&next, 1);
            if (llama_decode(ctx, batch) != 0) {
                fprintf(stderr, "llamacpp-greedy: decode failed at step %d of prompt %zu\n", step, pi);
                return 1;
            }
            const float * logits = llama_get_logits_ith(ctx, -1);
            // Greedy as llama.cpp's sampler: the first of the largest logits.
            int best = 0, second = -1;
            for (int t = 1; t < n_vocab; t++) {
                if (logits[t] > logits[best]) {
                    second = best;
                    best = t;
                } else if (second < 0 || logits[t] > logits[second]) {
                    second = t;
                }
            }
            next = best;
            const float gap = logits[best] - logits[second];
            const std::string text = piece(vocab, best);
            out.push_back(best);
            seconds.push_back(second);
            gaps.push_back(gap);
            const bool eog = llama_vocab_is_eog(vocab, best);
            if (!o.per_prompt) {
                printf("{\"prompt\":%zu,\"step\":%d,\"id\":%d,\"text\":%s,\"logit\":%.5f,\"second_id\":%d,"
                       "\"second_text\":%s,\"second_logit\":%.5f,\"gap\":%.5f,\"eog\":%s}\n",
                       pi, step, best, json_string(text).c_str(), logits[best], second,
                       json_string(piece(vocab, second)).c_str(), logits[second], gap, eog ? "true" : "false");
            }
            if (eog && !o.ignore_eos) {
                break;
            }
            continuation += text;
        }
        if (o.per_prompt) {
            const bool bos = !prompt.given_as_ids && llama_vocab_get_add_bos(vocab);
            printf("{\"prompt\":%s,\"bos\":%s,\"prompt_ids\":%s,\"ids\":%s,\"second_ids\":%s,\"gaps\":%s,"
                   "\"continuation\":%s}\n",
                   prompt.given_as_ids ? "null" : json_string(prompt.text).c_str(), bos ? "true" : "false",
                   ids_json(ids).c_str(), ids_json(out).c_str(), ids_json(seconds).c_str(), floats_json(gaps).c_str(),
                   json_string(continuation).c_str());
        }
        fflush(stdout);
        llama_free(ctx);
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
