// A real nt-server process on a free loopback port for C++ tests (the target defines NT_SERVER_BIN).
#ifndef NT_TESTS_SERVER_PROCESS_H_
#define NT_TESTS_SERVER_PROCESS_H_

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace nt::testing {

class ServerProcess {
 public:
  // Starts nt-server with `flags` and waits (up to 20 s) until it reports its port.
  explicit ServerProcess(std::vector<std::string> flags) {
    port_file_ = absl::StrCat(::testing::TempDir(), "/nt_port_", getpid(), "_", counter_++);
    std::remove(port_file_.c_str());
    flags.insert(flags.begin(), {NT_SERVER_BIN, "--address=127.0.0.1:0", "--port_file=" + port_file_});
    pid_ = fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      for (std::string& f : flags) argv.push_back(f.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    for (int i = 0; i < 400 && port_ == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream in(port_file_);
      in >> port_;
    }
  }
  ~ServerProcess() {
    if (pid_ > 0) Stop();
    std::remove(port_file_.c_str());
  }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // Sends `sig`, waits for the exit and returns the exit status (128 + signal when killed).
  int Signal(int sig) {
    if (pid_ <= 0) return -1;
    kill(pid_, sig);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  // SIGTERM: 0 expected from a graceful shutdown.
  int Stop() { return Signal(SIGTERM); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }
  int port() const { return port_; }

 private:
  static inline int counter_ = 0;
  std::string port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace nt::testing

#endif  // NT_TESTS_SERVER_PROCESS_H_
