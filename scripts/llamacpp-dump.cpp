// Dumps llama.cpp's intermediate tensors for one prompt, in full (llama-eval-callback prints a
// few values of each): every tensor of the compute graph whose name starts with one of the
// --filter prefixes is written as raw little-endian f32 (ggml order, ne0 fastest) to
// DIR/NAME.f32, and listed in DIR/index.tsv (name, ne0..ne3, type, op). Built and run by
// scripts/llamacpp-dump.sh; reference numerics as scripts/llamacpp-greedy.cpp (flash attention
// on, no repacking, GGML_CPU_TILED_MM=0). The prompt is processed as one batch.
//
//   llamacpp-dump -m MODEL.gguf (--ids 1,2,3 | -p TEXT) -o DIR [--filter l_out,attn_norm] [-t N]

#include "ggml.h"
#include "llama.h"

#include <clocale>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Dump {
    std::string dir;
    std::vector<std::string> prefixes;
    FILE * index = nullptr;

    bool wanted(const char * name) const {
        if (prefixes.empty()) {
            return true;
        }
        for (const auto & p : prefixes) {
            if (strncmp(name, p.c_str(), p.size()) == 0) {
                return true;
            }
        }
        return false;
    }
};

float value_at(const ggml_tensor * t, int64_t i0, int64_t i1, int64_t i2, int64_t i3) {
    const char * p = (const char *) t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3];
    switch (t->type) {
        case GGML_TYPE_F32: return *(const float *) p;
        case GGML_TYPE_F16: return ggml_fp16_to_fp32(*(const ggml_fp16_t *) p);
        case GGML_TYPE_I32: return (float) *(const int32_t *) p;
        default: return 0.0f;
    }
}

bool callback(ggml_tensor * t, bool ask, void * user) {
    auto * d = (Dump *) user;
    if (ask) {
        return d->wanted(t->name);
    }
    if (!d->wanted(t->name) || (t->type != GGML_TYPE_F32 && t->type != GGML_TYPE_F16)) {
        return true;
    }
    std::vector<float> v;
    v.reserve(ggml_nelements(t));
    for (int64_t i3 = 0; i3 < t->ne[3]; i3++)
        for (int64_t i2 = 0; i2 < t->ne[2]; i2++)
            for (int64_t i1 = 0; i1 < t->ne[1]; i1++)
                for (int64_t i0 = 0; i0 < t->ne[0]; i0++) v.push_back(value_at(t, i0, i1, i2, i3));
    std::string path = d->dir + "/" + t->name + ".f32";
    FILE * f = fopen(path.c_str(), "wb");
    if (!f || fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) {
        fprintf(stderr, "llamacpp-dump: cannot write %s\n", path.c_str());
        exit(1);
    }
    fclose(f);
    fprintf(d->index, "%s\t%lld\t%lld\t%lld\t%lld\t%s\t%s\n", t->name, (long long) t->ne[0], (long long) t->ne[1],
            (long long) t->ne[2], (long long) t->ne[3], ggml_type_name(t->type), ggml_op_desc(t));
    return true;
}

std::vector<std::string> split(const std::string & s) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= s.size()) {
        size_t end = s.find(',', start);
        if (end == std::string::npos) end = s.size();
        if (end > start) out.push_back(s.substr(start, end - start));
        start = end + 1;
    }
    return out;
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    std::string model_path, prompt, ids_arg;
    Dump dump;
    int threads = 2;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) {
                fprintf(stderr, "llamacpp-dump: %s needs a value\n", a.c_str());
                exit(2);
            }
            return argv[++i];
        };
        if (a == "-m") model_path = next();
        else if (a == "-p") prompt = next();
        else if (a == "--ids") ids_arg = next();
        else if (a == "-o") dump.dir = next();
        else if (a == "--filter") dump.prefixes = split(next());
        else if (a == "-t") threads = atoi(next().c_str());
        else {
            fprintf(stderr, "llamacpp-dump: unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (model_path.empty() || dump.dir.empty() || (prompt.empty() && ids_arg.empty())) {
        fprintf(stderr, "usage: llamacpp-dump -m MODEL (--ids 1,2,3 | -p TEXT) -o DIR [--filter P1,P2] [-t N]\n");
        return 2;
    }
    setenv("GGML_CPU_TILED_MM", "0", 1);
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.use_extra_bufts = false;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model) {
        fprintf(stderr, "llamacpp-dump: cannot load %s\n", model_path.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::vector<llama_token> ids;
    if (!ids_arg.empty()) {
        for (const auto & s : split(ids_arg)) ids.push_back(atoi(s.c_str()));
    } else {
        int n = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), nullptr, 0, true, true);
        ids.resize(n);
        llama_tokenize(vocab, prompt.c_str(), prompt.size(), ids.data(), n, true, true);
    }
    std::string index_path = dump.dir + "/index.tsv";
    dump.index = fopen(index_path.c_str(), "w");
    if (!dump.index) {
        fprintf(stderr, "llamacpp-dump: cannot write %s\n", index_path.c_str());
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = ids.size() + 1;
    cp.n_batch = ids.size();
    cp.n_ubatch = ids.size();
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    cp.cb_eval = callback;
    cp.cb_eval_user_data = &dump;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx || llama_decode(ctx, llama_batch_get_one(ids.data(), ids.size())) != 0) {
        fprintf(stderr, "llamacpp-dump: decoding failed\n");
        return 1;
    }
    fclose(dump.index);
    // The prompt's ids, for the caller to feed the same tokens elsewhere.
    for (size_t i = 0; i < ids.size(); i++) printf("%s%d", i ? "," : "", ids[i]);
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
